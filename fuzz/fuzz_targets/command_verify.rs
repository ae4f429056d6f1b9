//! Arbitrary bytes as a command envelope, verified against the fixed trust state.
//!
//! Oracle: nothing panics; an accepted command keeps every promise of the verifier; a
//! rejection only names a well-formed command id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wegweiser_fuzz::{NOW, check_rejected, check_verified, fixture};
use wegweiser_shared::command;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    match command::verify(data, &f.state, &f.expected, NOW) {
        Ok(v) => check_verified(&v, f),
        Err(r) => check_rejected(&r),
    }
});
