//! The webhook signature: hex HMAC-SHA256 of the raw request body with the
//! shared secret. Plane sends plain hex in `X-Plane-Signature`, Gitea plain
//! hex in `X-Gitea-Signature` and `sha256=<hex>` in `X-Hub-Signature-256`;
//! both forms are accepted, in either case, and compared in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Whether `header` is the HMAC-SHA256 of `body` under `secret`.
///
/// `header` is hex (upper or lower case), optionally prefixed by `sha256=`
/// and surrounded by whitespace. Anything that is not such hex is `false`.
/// The comparison of the MAC is constant-time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    let header = header.trim();
    let hex_part = match header.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("sha256=") => &header[7..],
        _ => header,
    };
    let Ok(tag) = hex::decode(hex_part) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"plane_wh_0123456789abcdef";
    const BODY: &[u8] = br#"{"event":"issue","action":"updated","data":{"id":"x"}}"#;

    /// The tag computed independently with the hmac crate.
    fn tag(secret: &[u8], body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn rfc_4231_test_case_2() {
        // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(tag(b"Jefe", b"what do ya want for nothing?"), expected);
        assert!(verify_signature(
            b"Jefe",
            b"what do ya want for nothing?",
            expected
        ));
    }

    #[test]
    fn plain_prefixed_and_any_case_verify() {
        let t = tag(SECRET, BODY);
        assert!(verify_signature(SECRET, BODY, &t));
        assert!(verify_signature(SECRET, BODY, &format!("sha256={t}")));
        assert!(verify_signature(SECRET, BODY, &format!("SHA256={t}")));
        assert!(verify_signature(SECRET, BODY, &t.to_ascii_uppercase()));
        assert!(verify_signature(SECRET, BODY, &format!(" {t}\n")));
    }

    #[test]
    fn wrong_secret_body_or_tag_fail() {
        let t = tag(SECRET, BODY);
        assert!(!verify_signature(b"other", BODY, &t));
        assert!(!verify_signature(SECRET, b"{}", &t));
        let mut flipped = t.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        assert!(!verify_signature(SECRET, BODY, &flipped));
        // A truncated tag is not a prefix match.
        assert!(!verify_signature(SECRET, BODY, &t[..32]));
    }

    #[test]
    fn garbage_is_false() {
        for header in [
            "",
            "sha256=",
            "zz",
            "sha1=abcd",
            "not hex at all",
            "sha256=0",
            "é",
        ] {
            assert!(!verify_signature(SECRET, BODY, header), "{header:?}");
        }
    }
}
