//! proto's rmp-serde codec on every type that crosses NATS: envelopes (worker side),
//! acks and outbound messages (gateway side), session records (KV), the auth
//! service's revocations and vault messages. Whatever decodes must encode again and
//! decode to the same value (round trip), and the subject a decoded envelope is
//! routed to must be a valid NATS subject.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::auth::{Revocation, VaultReply, VaultRequest};
use proto::trace::TraceParent;
use proto::{Ack, Envelope, Outbound, Principal, SessionRecord, decode, encode, subjects};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::from_bytes(data) {
        let again = Envelope::from_bytes(&env.to_bytes().expect("encode envelope")).expect("decode envelope");
        assert_eq!(again, env);
        let subject = subjects::actor(&env.key);
        assert!(subject.bytes().all(|b| b.is_ascii_graphic()), "{subject:?}");
        assert_eq!(proto::shard(&env.key), proto::shard(&again.key));
        if let Some(tp) = env.trace.as_deref().and_then(TraceParent::parse) {
            assert_eq!(TraceParent::parse(&tp.header_value()), Some(tp));
        }
        let _ = env.principal.binding();
    }
    if let Ok(ack) = Ack::from_bytes(data) {
        assert_eq!(
            Ack::from_bytes(&ack.to_bytes().expect("encode ack")).expect("decode ack"),
            ack
        );
    }
    if let Ok(out) = Outbound::from_bytes(data) {
        assert_eq!(
            Outbound::from_bytes(&out.to_bytes().expect("encode outbound")).expect("decode outbound"),
            out
        );
    }
    if let Ok(rec) = SessionRecord::from_bytes(data) {
        let again = SessionRecord::from_bytes(&rec.to_bytes().expect("encode record")).expect("decode record");
        assert_eq!(again, rec);
        let _ = rec.owned_by(&rec.principal);
        let _ = rec.is_reserved();
    }
    round_trip::<Principal>("principal", data);
    round_trip::<Revocation>("revocation", data);
    round_trip::<VaultRequest>("vault request", data);
    round_trip::<VaultReply>("vault reply", data);
});

fn round_trip<T>(what: &'static str, data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = decode::<T>(what, data) {
        let bytes = encode(what, &value).unwrap_or_else(|e| panic!("{e}"));
        let again: T = decode(what, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, value);
    }
}
