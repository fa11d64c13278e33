//! Sans-IO iSCSI state machines for both roles: login (security and operational
//! negotiation, CHAP), discovery, and the full feature phase. Time is passed in; PDUs to send,
//! deadlines and events are returned, never performed.

pub mod chap;
pub mod initiator;
pub mod login;
pub mod negotiate;
pub mod params;
pub mod target;

pub use chap::ChapCredentials;
pub use login::{
    InitiatorLogin, InitiatorLoginComplete, InitiatorLoginConfig, InitiatorLoginStep,
    LoginDirectory, LoginFailure, LoginIdentity, LoginRefusal, TargetLogin, TargetLoginComplete,
    TargetLoginConfig, TargetLoginOutcome, TargetLoginOutput, TargetLoginPolicy,
};
pub use negotiate::{Digest, Negotiation, Proposal, Role};
pub use params::{ConnectionParams, SessionParams, SessionType};
