//! The target side of login fed arbitrary Login Requests (well-framed PDUs with arbitrary
//! fields and text): never panics, answers every request, and ends (Complete or Failed)
//! within the PDU budget.
#![no_main]

use iscsi_pdu::*;
use iscsi_session::login::*;
use iscsi_session::{ChapCredentials, SessionParams};
use libfuzzer_sys::fuzz_target;

struct Dir {
    chap: bool,
}

impl LoginDirectory for Dir {
    fn authorize(&self, _: &LoginIdentity) -> Result<TargetLoginPolicy, LoginRefusal> {
        let mut p = TargetLoginPolicy::open(1);
        if self.chap {
            p.chap = Some(ChapCredentials::new("user", "secret-secret"));
            p.mutual_chap = Some(ChapCredentials::new("target", "another-secret"));
        }
        Ok(p)
    }
    fn admit(&self, _: &LoginIdentity, _: &SessionParams) -> Result<Tsih, LoginRefusal> {
        Ok(Tsih(1))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let dir = Dir { chap: flags & 1 != 0 };
    let mut login = TargetLogin::new(&dir, TargetLoginConfig::default(), &mut |b| b.fill(7));
    // Each chunk: a BHS made into a Login Request, then text.
    let mut ended = false;
    for (i, chunk) in rest.split(|b| *b == 0xff).take(80).enumerate() {
        let mut bhs = [0u8; 48];
        let n = chunk.len().min(48);
        bhs[..n].copy_from_slice(&chunk[..n]);
        bhs[0] = 0x43;
        let Bhs::LoginRequest(h) = Bhs::decode(&bhs) else {
            unreachable!()
        };
        let text = if chunk.len() > 48 { &chunk[48..] } else { &b""[..] };
        let out = login.handle(Pdu::with_data(Bhs::LoginRequest(h), text.to_vec()));
        if ended {
            assert!(out.response.is_none() && out.outcome.is_none(), "answer after the end");
            continue;
        }
        assert!(out.response.is_some() || out.outcome.is_some(), "request {i} unanswered");
        if out.outcome.is_some() {
            ended = true;
        }
        assert!(i < MAX_LOGIN_PDUS as usize || ended, "login never ends");
    }
});
