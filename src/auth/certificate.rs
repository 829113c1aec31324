//! Callers named by their client certificates (`--client-cert-identity uri-san`): the
//! certificate's single URI SAN, as SPIFFE's X509-SVID standard has it (Istio, Linkerd and SPIRE
//! issue such certificates for mutual TLS).

use crate::auth::AuthError;
use crate::domain::Caller;

/// Whether a caller without a bearer token is named by its client certificate
/// (`--client-cert-identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCertIdentity {
    /// No: the certificate only gates the connection (mutual TLS).
    #[default]
    Off,
    /// The certificate's one URI SAN is the caller (a SPIFFE ID, as Istio, Linkerd and SPIRE
    /// issue in X509-SVIDs).
    UriSan,
}

/// The caller named by a client certificate (DER): its single URI SAN (SPIFFE's X509-SVID
/// standard: exactly one), e.g. `spiffe://example.org/ns/billing/sa/api`.
pub fn caller_from_certificate(der: &[u8]) -> Result<Caller, AuthError> {
    use x509_parser::extensions::GeneralName;
    let (_, certificate) =
        x509_parser::parse_x509_certificate(der).map_err(|_| AuthError::BadCertificate)?;
    let names = certificate
        .subject_alternative_name()
        .map_err(|_| AuthError::BadCertificate)?;
    let mut uris = names
        .iter()
        .flat_map(|extension| extension.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let uri = uris.next().ok_or(AuthError::NoUriSan)?;
    if uris.next().is_some() {
        return Err(AuthError::SeveralUriSans);
    }
    let caller = Caller::parse(uri).map_err(|_| AuthError::BadCertificate)?;
    if caller == Caller::anonymous() {
        return Err(AuthError::BadCertificate);
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(uris: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificates_one_uri_san_is_its_caller() {
        let id = "spiffe://example.org/ns/billing/sa/api";
        assert_eq!(
            caller_from_certificate(&certificate(&[id]))
                .unwrap()
                .as_str(),
            id
        );
        assert_eq!(
            caller_from_certificate(&certificate(&[])),
            Err(AuthError::NoUriSan)
        );
        assert_eq!(
            caller_from_certificate(&certificate(&[id, "spiffe://example.org/other"])),
            Err(AuthError::SeveralUriSans)
        );
        assert_eq!(
            caller_from_certificate(b"not a certificate"),
            Err(AuthError::BadCertificate)
        );
    }
}
