//! A valid signed command envelope, edited by the input: a script of 4-byte edits
//! `[op, position (u16, big endian), byte]` that overwrite, insert or delete one byte.
//!
//! Oracle: no edit forges a command. Whatever still verifies carries exactly the payload that
//! was signed, by the key that signed it (the fuzzer cannot make an Ed25519 signature, so any
//! other accepted payload is a bug in the verifier).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wegweiser_fuzz::{NOW, check_rejected, check_verified, fixture};
use wegweiser_shared::command;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut env = f.envelope.clone();
    for edit in data.chunks_exact(4) {
        let at = usize::from(u16::from_be_bytes([edit[1], edit[2]]));
        match edit[0] % 3 {
            0 if !env.is_empty() => {
                let i = at % env.len();
                env[i] = edit[3];
            }
            1 => env.insert(at % (env.len() + 1), edit[3]),
            2 if !env.is_empty() => {
                env.remove(at % env.len());
            }
            _ => {}
        }
    }
    match command::verify(&env, &f.state, &f.expected, NOW) {
        Ok(v) => {
            assert_eq!(v.payload(), &f.payload, "an edited envelope verified");
            check_verified(&v, f);
        }
        Err(r) => check_rejected(&r),
    }
});
