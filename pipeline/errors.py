"""The exception tree of imap-pipeline.

Every error the engine raises on purpose derives from :class:`PipelineError`; driver errors
(imaplib, psycopg, redis, httpx) are wrapped with ``raise ... from exc`` at the layer that
touches the driver, so callers catch one tree::

    PipelineError
    ├── ConfigurationError          a setting is missing or malformed
    ├── CryptoError                 a secret cannot be decrypted with any configured key
    ├── ImapError                   anything that went wrong talking IMAP
    │   ├── ImapConnectError        host unreachable, DNS, refused, timed out
    │   ├── ImapTlsError            TLS handshake or certificate verification failed
    │   ├── ImapAuthError           the server refused the credentials
    │   ├── ImapThrottledError      the provider asked us to slow down ([LIMIT], [THROTTLED]…)
    │   ├── ImapFolderError         a folder does not exist or cannot be selected
    │   ├── ImapProtocolError       an answer we could not understand, or a dropped session
    │   └── ImapLimitError          the server broke a bound (a flood, a huge line or literal,
    │                               a trickle past a deadline): disconnect, back off; not a
    │                               protocol error, so nothing retries it at once
    ├── HostError                   a host named by a user cannot be used (pipeline.netguard)
    │   ├── HostUnresolved          it does not resolve, or not in time
    │   └── AddressRefused          it resolves to a non-public address the operator did not allow
    ├── MessageParseError           a message could not be normalized at all
    ├── GrantError                  grant-level problems
    │   ├── GrantNotFound
    │   ├── GrantInvalid            the grant exists but cannot be used (status says why)
    │   └── GrantConflict           the address has a grant on another server or username
    ├── RequestError                a caller asked for what cannot be done as asked (the API
    │   │                           answers 4xx; pipeline.api.errors.ApiError is one too)
    │   ├── InvalidRequest          malformed, not allowed, or refused by the mail server (400)
    │   └── NotFound                it names a message, draft or folder that is not there (404)
    └── ServiceError                a local service (Postgres, Redis) is down or unusable

Messages are written for the person who reads them: they say what failed and how to fix it,
and never carry a password or other secret.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error imap-pipeline raises on purpose."""


class ConfigurationError(PipelineError):
    """A setting is missing or malformed."""


class CryptoError(PipelineError):
    """A secret cannot be decrypted with any configured key."""


class ImapError(PipelineError):
    """Something went wrong talking IMAP."""


class ImapConnectError(ImapError):
    """The IMAP host could not be reached (DNS, refused, timed out)."""


class ImapTlsError(ImapError):
    """The TLS handshake or certificate verification failed."""


class ImapAuthError(ImapError):
    """The IMAP server refused the credentials."""


class ImapThrottledError(ImapError):
    """The provider answered with a throttling response; back off and retry later."""


class ImapFolderError(ImapError):
    """A folder does not exist or cannot be selected."""


class ImapProtocolError(ImapError):
    """An unexpected answer or a dropped session."""


class ImapLimitError(ImapError):
    """The server broke one of our bounds: a line, literal or answer too big, more untagged
    responses than allowed, or an answer not complete within its total deadline.

    Never retried at once (it is no :class:`ImapProtocolError`, which callers retry on a fresh
    session): the connection is dropped and the account backs off. ``bound`` names what was
    exceeded and ``setting`` the ``IMAP_PIPELINE_*`` variable that raises it, where known.
    """

    def __init__(self, message: str, *, bound: str = "", setting: str = "") -> None:
        super().__init__(message)
        self.bound = bound
        self.setting = setting


class HostError(PipelineError):
    """A host named by a user cannot be used."""


class HostUnresolved(HostError):
    """The host does not resolve (or not in time), or is not a host name at all."""


class AddressRefused(HostError):
    """The host resolves to an address that is not public and not allowed by the operator."""

    def __init__(self, message: str, *, address: object = None) -> None:
        super().__init__(message)
        self.address = address  # the offending IP address (for logs and the webhook message)


class MessageParseError(PipelineError):
    """A message could not be normalized at all."""


class GrantError(PipelineError):
    """A grant-level problem."""


class GrantNotFound(GrantError):
    """No grant with that id or email."""


class GrantInvalid(GrantError):
    """The grant exists but cannot be used; its status says why."""


class GrantRequestInvalid(GrantError):
    """A request to connect an account is malformed (which field, and why)."""


class GrantConflict(GrantError):
    """A sign-in names an address whose grant lives on another server or username: the existing
    grant is never changed by it (only by a login to its own account, or with the API key)."""


class ServiceError(PipelineError):
    """A local service (Postgres, Redis) is down or unusable."""


class RequestError(PipelineError):
    """A caller (the HTTP API, the CLI, a task) asked for something that cannot be done as
    asked; the message says what to change. Raised by the domain services the API calls."""


class InvalidRequest(RequestError):
    """The request is malformed or not allowed, or the mail server refused the change."""


class NotFound(RequestError):
    """The request names a message, draft, folder or attachment that is not there."""
