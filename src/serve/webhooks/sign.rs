//! Standard Webhooks signing, as OpenAI signs its webhooks: the key is the base64 decoding of
//! what follows `whsec_` in the secret (a secret without that prefix is its own bytes, as the
//! `openai` SDK reads it), and `webhook-signature` is `v1,` and the base64 HMAC-SHA256 of
//! `{webhook-id}.{webhook-timestamp}.{body}`. The secret never leaves this file: its `Debug`
//! is redacted, so that no log or error can print it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

/// Why a webhook secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secret is empty")]
    Empty,
    #[error("what follows whsec_ in the secret is not base64")]
    NotBase64,
}

/// The signing key made from a webhook secret.
#[derive(Clone)]
pub struct Secret {
    key: hmac::Key,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(redacted)")
    }
}

impl Secret {
    /// Reads `whsec_<base64>` (or any other text, taken as its bytes).
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let bytes = match text.strip_prefix("whsec_") {
            Some(encoded) => STANDARD
                .decode(encoded)
                .map_err(|_| SecretError::NotBase64)?,
            None => text.as_bytes().to_vec(),
        };
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }

    /// The `webhook-signature` header of `body` sent as message `id` at `timestamp`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(id.as_bytes());
        context.update(format!(".{timestamp}.").as_bytes());
        context.update(body);
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signs_as_the_standard_webhooks_example() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("a secret");
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn refuses_what_it_cannot_key_with_and_never_prints_it() {
        assert!(matches!(
            Secret::parse("whsec_not base64!"),
            Err(SecretError::NotBase64)
        ));
        assert!(matches!(Secret::parse("whsec_"), Err(SecretError::Empty)));
        let secret = Secret::parse("whsec_c2VjcmV0").expect("a secret");
        assert_eq!(format!("{secret:?}"), "Secret(redacted)");
    }
}
