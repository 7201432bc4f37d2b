//! Which tenant and campaign a message belongs to.
//!
//! The tenant comes from the authenticated SMTP user (always wins: a customer cannot send as
//! another customer by writing a header), else the `tenancy.tenant_header`, else
//! `default_tenant`. The campaign comes from `tenancy.campaign_header`. Both headers are
//! removed from the stored message: they are instructions to the MTA, not content for the
//! recipient, and leaking tenant names to mailbox providers would be a privacy bug.

use crate::config::is_valid_name;

/// Tenant and campaign header values found in a message, with the headers removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TenancyHeaders {
    /// Value of the tenant header.
    pub tenant: Option<String>,
    /// Value of the campaign header.
    pub campaign: Option<String>,
}

/// Find and remove the tenant and campaign headers from `message` (RFC 5322 text).
/// The first occurrence of each wins; values are unfolded but not yet validated
/// (see [`check_name`]), since an authenticated user's tenant makes the header moot.
pub fn take_headers(
    message: &mut Vec<u8>,
    tenant_header: &str,
    campaign_header: &str,
) -> TenancyHeaders {
    let header_end = find_header_end(message);
    let mut found = TenancyHeaders::default();
    let mut kept: Vec<u8> = Vec::with_capacity(header_end);
    let mut pos = 0;
    let mut removed_any = false;
    while pos < header_end {
        // One field: its first line plus continuation lines starting with SP or HTAB.
        let mut end = next_line(message, pos, header_end);
        while end < header_end && matches!(message[end], b' ' | b'\t') {
            end = next_line(message, end, header_end);
        }
        let field = &message[pos..end];
        let name_end = field.iter().position(|&b| b == b':');
        let slot = name_end.and_then(|n| {
            let name = &field[..n];
            if name.eq_ignore_ascii_case(tenant_header.as_bytes()) {
                Some(&mut found.tenant)
            } else if name.eq_ignore_ascii_case(campaign_header.as_bytes()) {
                Some(&mut found.campaign)
            } else {
                None
            }
        });
        match (slot, name_end) {
            (Some(slot), Some(n)) => {
                removed_any = true;
                if slot.is_none() {
                    *slot = Some(unfold(&field[n + 1..]));
                }
            }
            _ => kept.extend_from_slice(field),
        }
        pos = end;
    }
    if removed_any {
        kept.extend_from_slice(&message[header_end..]);
        *message = kept;
    }
    found
}

/// Check a tenant or campaign name from `header`; the error is fit for an SMTP reply.
pub fn check_name(header: &str, value: &str) -> Result<(), String> {
    if is_valid_name(value) {
        Ok(())
    } else {
        Err(format!(
            "{header} value {value:?} is not a valid name (letters, digits, '-', '_', '.'; at most 64)"
        ))
    }
}

/// Offset just past the header section's last field (the blank line stays with the body).
fn find_header_end(m: &[u8]) -> usize {
    let mut pos = 0;
    while pos < m.len() {
        if m[pos..].starts_with(b"\r\n") {
            return pos;
        }
        pos = next_line(m, pos, m.len());
    }
    m.len()
}

/// Offset just past the CRLF ending the line that starts at `pos` (or `limit`).
fn next_line(m: &[u8], pos: usize, limit: usize) -> usize {
    m[pos..limit]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| pos + i + 2)
        .unwrap_or(limit)
}

fn unfold(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_both_headers_and_keeps_the_rest() {
        let mut m = b"From: a@x\r\nX-Tenant: acme\r\nSubject: hi\r\nx-campaign:\r\n  spring\r\n\r\nX-Tenant: body\r\n".to_vec();
        let h = take_headers(&mut m, "X-Tenant", "X-Campaign");
        assert_eq!(h.tenant.as_deref(), Some("acme"));
        assert_eq!(h.campaign.as_deref(), Some("spring"));
        assert_eq!(m, b"From: a@x\r\nSubject: hi\r\n\r\nX-Tenant: body\r\n");
    }

    #[test]
    fn no_headers_leaves_message_alone() {
        let mut m = b"Subject: hi\r\n\r\nbody\r\n".to_vec();
        let h = take_headers(&mut m, "X-Tenant", "X-Campaign");
        assert_eq!(h, TenancyHeaders::default());
        assert_eq!(m, b"Subject: hi\r\n\r\nbody\r\n");
    }

    #[test]
    fn rejects_unusable_names() {
        let mut m = b"X-Tenant: acme corp:1\r\n\r\n".to_vec();
        let h = take_headers(&mut m, "X-Tenant", "X-Campaign");
        assert!(check_name("X-Tenant", h.tenant.as_deref().unwrap()).is_err());
        assert!(check_name("X-Tenant", "acme-1.eu_west").is_ok());
    }
}
