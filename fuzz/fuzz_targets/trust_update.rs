//! Arbitrary bytes as a trust bundle: parsed, pinned from scratch, and applied to the fixed
//! trust state.
//!
//! Oracle: an update is all or nothing (a refused bundle leaves the state exactly as it was);
//! versions never go back; whatever keyset is installed is one the fixture's roots signed (the
//! fuzzer cannot sign, so anything else is forged); and the state saved after an update loads.
#![no_main]

use base64::{Engine, engine::general_purpose::STANDARD};
use libfuzzer_sys::fuzz_target;
use wegweiser_fuzz::{NOW, fixture};
use wegweiser_shared::trust::{TrustBundle, TrustState};

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Ok(bundle) = TrustBundle::parse(data) else {
        return;
    };
    // Trust on first use accepts any self-consistent bundle; it must only not panic.
    let _ = TrustState::pin(&bundle, NOW);
    let mut state = f.state.clone();
    let before = state.saved();
    match state.update(&bundle, NOW) {
        Err(_) => assert_eq!(state.saved(), before, "a refused update changed the state"),
        Ok(u) => {
            assert!(u.root.1 >= u.root.0 && u.keyset.1 >= u.keyset.0);
            assert_eq!(
                (u.root.1, u.keyset.1),
                (state.root_version(), state.keyset_version())
            );
            let saved = state.saved();
            let keyset = STANDARD
                .decode(&saved.keyset.payload)
                .expect("an installed keyset decodes");
            assert!(
                f.signed_keysets.contains(&keyset),
                "a keyset nobody signed was installed"
            );
            TrustState::load(&saved).expect("a state saved after an update loads");
        }
    }
});
