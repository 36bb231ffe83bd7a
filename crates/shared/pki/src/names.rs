use crate::PkiError;

/// The URI SAN prefix that binds a client certificate to a node.
pub(crate) const NODE_URI_PREFIX: &str = "urn:gpuaas:node:";

const MAX_NODE_ID_LEN: usize = 64;

/// The URI SAN that names `node_id` in its certificate.
pub fn node_san_uri(node_id: &str) -> String {
    format!("{NODE_URI_PREFIX}{node_id}")
}

/// Node ids end up in a certificate's CN and URI and back in authorization decisions, so
/// only a character set that needs no escaping anywhere is allowed.
pub(crate) fn validate_node_id(node_id: &str) -> Result<(), PkiError> {
    if node_id.is_empty() || node_id.len() > MAX_NODE_ID_LEN {
        return Err(PkiError::InvalidNodeId(format!("must be 1 to {MAX_NODE_ID_LEN} characters long")));
    }
    if !node_id.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-') {
        return Err(PkiError::InvalidNodeId("only ASCII letters, digits and '-' are allowed".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_limited_to_a_safe_alphabet_and_length() {
        for valid in ["a", "node-1", "ABC-def-123", &"x".repeat(64)] {
            assert!(validate_node_id(valid).is_ok(), "{valid} should be valid");
        }
        for invalid in ["", &"x".repeat(65), "a/b", "a b", "a:b", "nöde", "a\n", "a_b", "a.b"] {
            assert!(
                matches!(validate_node_id(invalid), Err(PkiError::InvalidNodeId(_))),
                "{invalid:?} should be refused"
            );
        }
    }

    #[test]
    fn san_uri_embeds_the_node_id() {
        assert_eq!(node_san_uri("n-1"), "urn:gpuaas:node:n-1");
    }
}
