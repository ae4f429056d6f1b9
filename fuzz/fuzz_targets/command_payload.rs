//! Arbitrary bytes as the payload of a command envelope that the fixture *signs*, so the
//! fuzzer reaches the checks behind the signature (schema, binding, time window, arguments),
//! which it cannot reach through `command_verify`. The last input byte picks the signer: the
//! active key, or a retired, revoked or unknown one.
//!
//! Oracle: an accepted command keeps every promise of the verifier, and was signed by the
//! active key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wegweiser_fuzz::{NOW, check_rejected, check_verified, fixture};
use wegweiser_shared::{command, dsse::Envelope};

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let (body, signer) = match data.split_last() {
        Some((&b, rest)) if b >= 0xfd => (rest, &f.refused[usize::from(b - 0xfd)]),
        _ => (data, &f.active),
    };
    let env = Envelope::sign(command::PAYLOAD_TYPE, body, &[signer]).to_vec();
    match command::verify(&env, &f.state, &f.expected, NOW) {
        Ok(v) => {
            assert_eq!(signer.verifying_key(), f.active.verifying_key());
            check_verified(&v, f);
        }
        Err(r) => check_rejected(&r),
    }
});
