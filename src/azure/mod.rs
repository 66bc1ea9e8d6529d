//! Azure adapters: Blob Storage, Queue Storage and Key Vault through the official SDK, with a
//! token credential (managed identity in production). The only module that uses SDK types.

pub mod arm;
pub mod blob;
pub mod keys;
pub mod keyvault;
pub mod pgbackrest;
pub mod queue;
pub mod sas;
pub mod transport;

pub use blob::AzureBlobStore;
pub use keys::AzureKeyWrapper;
pub use keyvault::AzureCloudSecrets;
pub use queue::AzureQueue;
pub use transport::{CredentialKind, RetrySettings, client_options, credential};

use crate::domain::error::Error;
use crate::domain::secret::redact;
use azure_core::error::ErrorKind;
use std::fmt;

/// Which storage service an error came from; it decides the role named in a 403 hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Blob,
    Queue,
}

/// The one place that turns an SDK error into ours.
///
/// - HTTP 408, 429 and 5xx (except 501, "not implemented") are transient; every other HTTP
///   status (400, 401, 403, 404, 409, 412, ...) is permanent.
/// - Connection and I/O failures (timeouts included) are transient, except an untrusted or
///   invalid TLS certificate, which is permanent and says so.
/// - A failure to get a token is transient (the identity endpoint may be briefly unavailable).
/// - A response that cannot be decoded (cut off mid-document) is transient.
/// - Anything else (bad URL, ...) is permanent.
///
/// - A 409 or 403 whose error code says a WORM rule refused the change (see
///   [`is_immutability_code`]) is [`Error::immutable`]: permanent, and recognisable by
///   [`Error::is_immutable`] without reading the message.
///
/// The message is `"{what}: {detail}"`; the detail is the SDK's text through [`redact`].
pub(crate) fn sdk_error(service: Service, what: impl fmt::Display, e: azure_core::Error) -> Error {
    // Whatever the kind (the transport marks it Other so the SDK does not retry it; the identity
    // credential wraps it as Credential), the certificate problem is the cause: say it first.
    if let Some(problem) = certificate_problem(&e) {
        return Error::permanent(format!(
            "{what}: TLS certificate rejected: {} ({})",
            redact(&problem),
            redact(&describe(&e))
        ))
        .with_hint(
            "the endpoint's TLS certificate is not trusted: check the endpoint address, or add the CA \
             that signed it with PGVAULT_CA_FILE",
        );
    }
    let detail = redact(&describe(&e));
    let message = format!("{what}: {detail}");
    match e.kind() {
        ErrorKind::HttpResponse { status, error_code, .. }
            if matches!(u16::from(*status), 403 | 409) && error_code.as_deref().is_some_and(is_immutability_code) =>
        {
            Error::immutable(message).with_hint(
                "the container's immutability policy or a legal hold forbids this change until it \
                 expires or is released",
            )
        }
        ErrorKind::HttpResponse { status, .. } => {
            let code = u16::from(*status);
            let transient = code == 408 || code == 429 || (code >= 500 && code != 501);
            let err = if transient { Error::transient(message) } else { Error::permanent(message) };
            match code {
                403 => err.with_hint(match service {
                    Service::Blob => {
                        "the identity needs the Storage Blob Data Contributor role on the storage \
                         account or the container; a new role assignment can take a few minutes \
                         to apply"
                    }
                    Service::Queue => {
                        "the identity needs the Storage Queue Data Contributor role on the storage \
                         account or the queue; a new role assignment can take a few minutes to \
                         apply"
                    }
                }),
                401 => err.with_hint(
                    "the storage account refused the token: check that the identity belongs to \
                     the account's tenant",
                ),
                501 => err.with_hint("the storage endpoint does not implement this operation"),
                _ => err,
            }
        }
        ErrorKind::Connection | ErrorKind::Io => Error::transient(message),
        // The service's answer could not be read (a body cut off mid-document, say): reads
        // and our idempotent writes may be tried again.
        ErrorKind::DataConversion => Error::transient(message),
        ErrorKind::Credential => Error::transient(message).with_hint(
            "no token for Azure Storage: check the managed identity (and its client id) or the \
             az login session",
        ),
        _ => Error::permanent(message),
    }
}

/// Whether a Blob service error code is a refusal by a time-based immutability policy or a legal
/// hold (container- or version-level WORM): `BlobImmutableDueToPolicy`,
/// `BlobImmutableDueToLegalHold`, `ContainerImmutableDueToPolicy`, and the `ImmutabilityPolicy...`
/// / `...LegalHold...` variants some operations answer with.
pub(crate) fn is_immutability_code(code: &str) -> bool {
    let c = code.to_ascii_lowercase();
    c.contains("immutabledueto") || c.starts_with("immutabilitypolicy") || c.contains("legalhold")
}

/// The SDK error as text: the status, the service's error code and message for an HTTP error;
/// the whole cause chain otherwise (the SDK's own message alone hides the TLS reason).
fn describe(e: &azure_core::Error) -> String {
    if let ErrorKind::HttpResponse { status, error_code, raw_response } = e.kind() {
        let mut s = format!("http {}", u16::from(*status));
        match error_code {
            Some(code) => s.push_str(&format!(" {code}")),
            None => s.push_str(&format!(" {}", status.canonical_reason())),
        }
        if let Some(msg) = raw_response.as_ref().and_then(|r| xml_element(r.body().as_ref(), "Message")) {
            s.push_str(&format!(" ({msg})"));
        }
        return s;
    }
    let mut parts: Vec<String> = vec![e.to_string()];
    for_each_cause(e, &mut |err| {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    });
    parts.join(": ")
}

/// The first line of `<name>...</name>` in an XML error body, if any.
fn xml_element(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&format!("</{name}>"))?;
    let line = text[start..end].lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// Visit every cause below `e`. `io::Error::source()` skips the error it wraps (it returns
/// that error's own source), and TLS failures arrive as io errors nested in io errors, so those
/// are unwrapped explicitly.
fn for_each_cause(e: &azure_core::Error, f: &mut dyn FnMut(&(dyn std::error::Error + 'static))) {
    fn visit(
        err: &(dyn std::error::Error + 'static),
        f: &mut dyn FnMut(&(dyn std::error::Error + 'static)),
        depth: usize,
    ) {
        if depth > 32 {
            return;
        }
        f(err);
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            visit(inner, f, depth + 1);
        } else if let Some(next) = err.source() {
            visit(next, f, depth + 1);
        }
    }
    if let Some(first) = std::error::Error::source(e) {
        visit(first, f, 0);
    }
}

/// Whether a transport error is a certificate the client refused (or none was presented).
fn is_certificate_error(e: &azure_core::Error) -> bool {
    certificate_problem(e).is_some()
}

/// The refused certificate's problem as rustls words it (`invalid peer certificate:
/// UnknownIssuer`), if a certificate was refused anywhere in the cause chain.
fn certificate_problem(e: &azure_core::Error) -> Option<String> {
    let mut found = None;
    for_each_cause(e, &mut |err| {
        if found.is_none()
            && let Some(
                tls @ (rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType),
            ) = err.downcast_ref::<rustls::Error>()
        {
            found = Some(tls.to_string());
        }
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::{RawResponse, StatusCode, headers::Headers};

    fn http_error(code: u16, error_code: &str, body: &str) -> azure_core::Error {
        azure_core::Error::from(ErrorKind::HttpResponse {
            status: StatusCode::from(code),
            error_code: Some(error_code.to_string()),
            raw_response: Some(Box::new(RawResponse::from_bytes(
                StatusCode::from(code),
                Headers::new(),
                body.as_bytes().to_vec(),
            ))),
        })
    }

    #[test]
    fn statuses_map_to_kinds() {
        for (code, permanent) in [
            (400, true),
            (401, true),
            (403, true),
            (404, true),
            (409, true),
            (412, true),
            (501, true),
            (408, false),
            (429, false),
            (500, false),
            (503, false),
        ] {
            let e = sdk_error(Service::Blob, "get blob x", http_error(code, "Code", ""));
            assert_eq!(e.is_permanent(), permanent, "{code}: {e}");
        }
        let e = sdk_error(Service::Blob, "get blob x", ErrorKind::Io.into_error());
        assert!(!e.is_permanent());
    }

    #[test]
    fn immutability_refusals_are_marked() {
        for (status, code) in [
            (409, "BlobImmutableDueToPolicy"),
            (409, "BlobImmutableDueToLegalHold"),
            (409, "ContainerImmutableDueToPolicy"),
            (403, "ImmutabilityPolicyDeleteNotAllowed"),
            (403, "BlobImmutableDueToPolicy"),
        ] {
            let body = format!(
                "<Error><Code>{code}</Code><Message>This operation is not permitted as the blob is immutable due to a policy.</Message></Error>"
            );
            let e = sdk_error(Service::Blob, "delete blob \"a\"", http_error(status, code, &body));
            assert!(e.is_immutable(), "{status} {code}: {e}");
            assert!(e.is_permanent(), "{status} {code}");
            assert!(!e.to_string().contains("Storage Blob Data Contributor"), "{e}");
        }
        // Other refusals are not: a plain conflict, a role problem, a 404, a 501 from Azurite.
        for (status, code) in [
            (409, "LeaseIdMissing"),
            (403, "AuthorizationPermissionMismatch"),
            (404, "BlobNotFound"),
            (501, "NotImplemented"),
            (412, "BlobImmutableDueToPolicy"),
        ] {
            let e = sdk_error(Service::Blob, "delete blob \"a\"", http_error(status, code, ""));
            assert!(!e.is_immutable(), "{status} {code}: {e}");
        }
        // The marker comes from the code, not the text.
        let e = sdk_error(Service::Blob, "x", http_error(409, "Conflict", "<Message>immutable legal hold</Message>"));
        assert!(!e.is_immutable());
    }

    #[test]
    fn forbidden_names_the_role_and_redacts() {
        let body = "<?xml version=\"1.0\"?><Error><Code>AuthorizationPermissionMismatch</Code>\
                    <Message>This request is not authorized. url ?sv=1&amp;sig=SECRETSIG&amp;se=2\n\
                    RequestId:1</Message></Error>";
        let e = sdk_error(
            Service::Blob,
            "stage block 1 of blob \"a\"",
            http_error(403, "AuthorizationPermissionMismatch", body),
        );
        let text = e.to_string();
        assert!(text.starts_with("stage block 1 of blob \"a\": http 403"), "{text}");
        assert!(text.contains("Storage Blob Data Contributor"), "{text}");
        assert!(!text.contains("SECRETSIG"), "{text}");
        assert!(!text.contains("RequestId"), "{text}");
        let e = sdk_error(Service::Queue, "send to queue q", http_error(403, "AuthorizationPermissionMismatch", ""));
        assert!(e.to_string().contains("Storage Queue Data Contributor"));
    }
}
