//! The exceptions of `ci_client`, and which one each of `ci`'s errors becomes.

use ci_cli::client::RequestError;
use ci_cli::commands::submit::SubmitError;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    ci_client,
    CIError,
    PyException,
    "Anything that went wrong talking to the server or submitting a project; ``status`` is \
     the HTTP status when the server answered, else ``None``."
);
create_exception!(
    ci_client,
    AuthError,
    CIError,
    "No API key, or the server refused it (401, 403)."
);
create_exception!(
    ci_client,
    NotFound,
    CIError,
    "No such job, or not yours (404), or its log was removed (410)."
);
create_exception!(
    ci_client,
    ServerUnavailable,
    CIError,
    "The server cannot be reached, or answered 5xx (busy, restarting, its database away)."
);
create_exception!(
    ci_client,
    Rejected,
    CIError,
    "The server refused the request as it is (400, 409, 413, 429: a cap, a bad argument)."
);
create_exception!(
    ci_client,
    ProjectError,
    CIError,
    "The project cannot be submitted as it is: no such directory, nothing in it, too big, or \
     no Python of the server's fits it. Nothing was uploaded."
);

/// Adds the exceptions to the module, each with `status = None` until an instance says.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("CIError", py.get_type::<CIError>())?;
    m.add("AuthError", py.get_type::<AuthError>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("ServerUnavailable", py.get_type::<ServerUnavailable>())?;
    m.add("Rejected", py.get_type::<Rejected>())?;
    m.add("ProjectError", py.get_type::<ProjectError>())?;
    py.get_type::<CIError>().setattr("status", py.None())?;
    Ok(())
}

/// An `AuthError` that no answer of the server's caused (no key at all).
pub fn auth(message: &str) -> PyErr {
    AuthError::new_err(message.to_string())
}

/// An error of `ci`'s, as the exception a Python caller catches.
pub trait Raise {
    fn raise(self) -> PyErr;
}

impl Raise for RequestError {
    fn raise(self) -> PyErr {
        let message = self.to_string();
        match self {
            RequestError::Connect { .. } => ServerUnavailable::new_err(message),
            RequestError::Http(status, _) => with_status(
                match status {
                    401 | 403 => AuthError::new_err(message),
                    404 | 410 => NotFound::new_err(message),
                    500.. => ServerUnavailable::new_err(message),
                    _ => Rejected::new_err(message),
                },
                status,
            ),
            RequestError::Other(_) => CIError::new_err(message),
        }
    }
}

impl Raise for SubmitError {
    fn raise(self) -> PyErr {
        match self {
            SubmitError::Request(e) => e.raise(),
            e @ (SubmitError::Python(_) | SubmitError::Project(_)) => {
                ProjectError::new_err(e.to_string())
            }
        }
    }
}

impl Raise for anyhow::Error {
    fn raise(self) -> PyErr {
        match self.downcast::<RequestError>() {
            Ok(e) => e.raise(),
            Err(e) => CIError::new_err(format!("{e:#}")),
        }
    }
}

/// `err` with its `status` set.
fn with_status(err: PyErr, status: u16) -> PyErr {
    Python::attach(|py| {
        // Setting an attribute of a fresh exception instance does not fail.
        let _ = err.value(py).setattr("status", status);
    });
    err
}
