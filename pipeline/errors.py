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
    │   └── ImapProtocolError       an answer we could not understand, or a dropped session
    │       └── ImapLimitError      the server broke a read bound or a deadline (a flood, a
    │                               huge line or literal, a trickle): disconnect, back off
    ├── MessageParseError           a message could not be normalized at all
    ├── GrantError                  grant-level problems
    │   ├── GrantNotFound
    │   └── GrantInvalid            the grant exists but cannot be used (status says why)
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


class ImapLimitError(ImapProtocolError):
    """The server broke one of our bounds: a line, literal or answer too big, more untagged
    responses than allowed, or an answer not complete within its total deadline.

    Never retried at once: the connection is dropped and the grant backs off.
    """


class MessageParseError(PipelineError):
    """A message could not be normalized at all."""


class GrantError(PipelineError):
    """A grant-level problem."""


class GrantNotFound(GrantError):
    """No grant with that id or email."""


class GrantInvalid(GrantError):
    """The grant exists but cannot be used; its status says why."""


class ServiceError(PipelineError):
    """A local service (Postgres, Redis) is down or unusable."""
