//! TLS for every HTTPS client of the process (backends, object stores): rustls with ring as its
//! crypto provider, installed once before the first client is built. reqwest is built without a
//! provider of its own, so a client built before this would have none.

use std::sync::Once;

/// Installs ring as the process's rustls provider, once; a provider installed by the embedding
/// program first is kept.
pub fn install_crypto_provider() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // An error means a provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
