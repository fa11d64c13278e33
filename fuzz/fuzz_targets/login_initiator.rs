//! The initiator side of login fed arbitrary Login Responses: never panics, and every step is
//! a request to send, success or failure — never silence.
#![no_main]

use iscsi_pdu::*;
use iscsi_session::login::*;
use iscsi_session::ChapCredentials;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut cfg = InitiatorLoginConfig::normal(
        "iqn.2026-01.io.mpath:fuzz",
        "iqn.2026-01.io.mpath:target",
        Isid([0x80, 0, 0, 0, 0, 1]),
    );
    if flags & 1 != 0 {
        cfg.chap = Some(ChapCredentials::new("user", "secret-secret"));
        if flags & 2 != 0 {
            cfg.mutual_chap = Some(ChapCredentials::new("target", "another-secret"));
        }
    }
    let Ok(mut login) = InitiatorLogin::new(cfg) else {
        return;
    };
    let _first = login.start(&mut |b| b.fill(3));
    for chunk in rest.split(|b| *b == 0xff).take(80) {
        let mut bhs = [0u8; 48];
        let n = chunk.len().min(48);
        bhs[..n].copy_from_slice(&chunk[..n]);
        bhs[0] = 0x23;
        let text = if chunk.len() > 48 { &chunk[48..] } else { &b""[..] };
        let Bhs::LoginResponse(h) = Bhs::decode(&bhs) else {
            unreachable!()
        };
        match login.handle(Pdu::with_data(Bhs::LoginResponse(h), text.to_vec())) {
            InitiatorLoginStep::Send(_) => {}
            InitiatorLoginStep::Complete(_) | InitiatorLoginStep::Failed(_) => break,
        }
    }
});
