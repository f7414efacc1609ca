//! The mesh identity of the caller, from the URI SAN of its mTLS certificate:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` as Istio issues them.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The SPIFFE id without `spiffe://`, as Istio writes `principals`.
    pub principal: String,
    pub trust_domain: String,
    pub namespace: Option<String>,
    /// `<namespace>/<service-account>`, as Istio writes `serviceAccounts`.
    pub service_account: Option<String>,
}

impl PeerIdentity {
    /// `uri` is Envoy's `connection.uri_san_peer_certificate` (the first URI SAN). A URI that
    /// is not a SPIFFE id names no mesh identity: conditions on it are false, as Istio's
    /// `spiffe://`-prefixed matchers never match it.
    pub fn from_uri_san(uri: &str) -> Option<PeerIdentity> {
        let principal = uri.strip_prefix("spiffe://")?;
        let (trust_domain, path) = principal.split_once('/').unwrap_or((principal, ""));
        if trust_domain.is_empty() {
            return None;
        }
        let mut namespace = None;
        let mut service_account = None;
        let mut parts = path.split('/');
        if let (Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            if !ns.is_empty() && !sa.is_empty() {
                namespace = Some(ns.to_owned());
                service_account = Some(format!("{ns}/{sa}"));
            }
        }
        Some(PeerIdentity {
            principal: principal.to_owned(),
            trust_domain: trust_domain.to_owned(),
            namespace,
            service_account,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_istio_workload_identity_has_every_part() {
        let peer = PeerIdentity::from_uri_san("spiffe://cluster.local/ns/billing/sa/api").unwrap();
        assert_eq!(peer.principal, "cluster.local/ns/billing/sa/api");
        assert_eq!(peer.trust_domain, "cluster.local");
        assert_eq!(peer.namespace.as_deref(), Some("billing"));
        assert_eq!(peer.service_account.as_deref(), Some("billing/api"));
    }

    #[test]
    fn other_spiffe_ids_have_a_principal_and_trust_domain_only() {
        let peer = PeerIdentity::from_uri_san("spiffe://example.org/workload/x").unwrap();
        assert_eq!(peer.trust_domain, "example.org");
        assert_eq!(peer.namespace, None);
        let peer = PeerIdentity::from_uri_san("spiffe://td/ns/a/sa/b/extra").unwrap();
        assert_eq!(peer.service_account, None);
        assert_eq!(PeerIdentity::from_uri_san("https://example.org/x"), None);
        assert_eq!(PeerIdentity::from_uri_san("spiffe:///ns/a/sa/b"), None);
    }
}
