//! Escaping untrusted text for HTML. Everything the board shows that did not
//! come from orch's own code — titles and descriptions from Plane issues,
//! reasons and errors, agent logs — goes through [`html`] on its way into a
//! page: `&`, `<`, `>`, `"` and `'` become character references, so such
//! text can neither open a tag nor leave an attribute value. Control,
//! C1 and bidi-override characters are written out as escapes first
//! ([`crate::output::safe_lines`]), as on the terminal.

use std::borrow::Cow;

/// `text` safe inside an HTML element or a quoted attribute value.
pub fn html(text: &str) -> String {
    crate::html::escape(&crate::output::safe_lines(text))
}

/// Bytes of a log as text: invalid UTF-8 replaced, controls escaped (a log
/// served as `text/plain` reaches terminals through `curl` too).
pub fn log_text(bytes: &[u8]) -> Cow<'_, str> {
    match String::from_utf8_lossy(bytes) {
        Cow::Borrowed(s) => crate::output::safe_lines(s),
        Cow::Owned(s) => Cow::Owned(crate::output::safe_lines(&s).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_quotes_are_escaped() {
        assert_eq!(
            html(r#"<script>alert("x")</script> 'a' & b"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &#39;a&#39; &amp; b"
        );
        assert_eq!(html("\u{1b}[2J\u{202e}ok\n"), "\\x1b[2J\\u{202e}ok\n");
    }

    #[test]
    fn logs_are_lossy_and_without_controls() {
        assert_eq!(log_text(b"ok\n\xff\x1b[31m"), "ok\n\u{fffd}\\x1b[31m");
    }
}
