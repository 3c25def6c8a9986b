"""What a caller gives to connect an account, resolved against the provider presets."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from pipeline.errors import ConfigurationError
from pipeline.grants.tlsprobe import WELL_KNOWN_IMAP, WELL_KNOWN_SMTP
from pipeline.presets import PRESETS, ProviderPreset, TlsMode, detect, preset


class GrantRequest(BaseModel):
    """Parameters to connect an IMAP account. Unset host/port/TLS come from the presets."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)
    password: SecretStr
    provider: str | None = None
    imap_host: str | None = None
    imap_port: int | None = Field(default=None, ge=1, le=65535)
    imap_tls: TlsMode | None = None
    imap_username: str | None = None
    allow_plaintext: bool = False  # IMAP and SMTP without TLS (the password in the clear)
    verify_tls: bool = True
    smtp_host: str | None = None
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_tls: TlsMode | None = None
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None

    @field_validator("email")
    @classmethod
    def _email_shape(cls, value: str) -> str:
        value = value.strip()
        if "@" not in value or value.startswith("@"):
            raise ValueError("must be an email address such as alice@example.com")
        return value

    def resolve(self) -> ResolvedGrant:
        """Fill host, port and TLS mode from the presets and check they make sense.

        Raises:
            ConfigurationError: No host could be determined, or plaintext was not allowed.
        """
        p: ProviderPreset
        if self.provider:
            if self.provider.lower() not in PRESETS and self.provider.lower() != "imap":
                raise ConfigurationError(
                    f"Unknown provider {self.provider!r}; known: {', '.join(sorted(PRESETS))}."
                )
            p = preset(self.provider if self.provider.lower() != "imap" else "generic")
        else:
            p = detect(self.email)
        host = self.imap_host or p.imap_host
        if not host:
            raise ConfigurationError(
                f"No IMAP host known for {self.email.rpartition('@')[2]!r}: give the host "
                "(and port) of the IMAP server, or a provider."
            )
        # A port given without a TLS mode: the well-known ones say it, any other is probed
        # when connecting (pipeline.grants.tlsprobe); "starttls" stands in until then.
        imap_probe = bool(self.imap_port and not self.imap_tls)
        imap_probe = imap_probe and self.imap_port not in WELL_KNOWN_IMAP
        tls: TlsMode = self.imap_tls or (
            p.imap_tls if not self.imap_port else WELL_KNOWN_IMAP.get(self.imap_port, "starttls")
        )
        port = self.imap_port or (p.imap_port if tls == p.imap_tls else _port_for_tls(tls))
        if tls == "plain" and not self.allow_plaintext:
            raise ConfigurationError(
                "Refusing to send a password without TLS: use TLS mode ssl or starttls, or allow "
                "plaintext explicitly (--allow-plaintext) for a server on a trusted network."
            )
        has_smtp = bool(self.smtp_host or p.smtp_host)
        smtp_probe = bool(self.smtp_port and not self.smtp_tls)
        smtp_probe = smtp_probe and has_smtp and self.smtp_port not in WELL_KNOWN_SMTP
        smtp_tls: TlsMode | None = self.smtp_tls or (
            None
            if not has_smtp
            else WELL_KNOWN_SMTP.get(self.smtp_port, "starttls")
            if self.smtp_port
            else p.smtp_tls
        )
        if smtp_tls == "plain" and not self.allow_plaintext:
            raise ConfigurationError(
                "Refusing to send the SMTP password without TLS: use smtp_tls ssl or starttls, "
                "or allow plaintext explicitly (--allow-plaintext) for a server on a trusted "
                "network."
            )
        return ResolvedGrant(
            email=self.email,
            provider=p.name,
            imap_host=host,
            imap_port=port,
            imap_tls=tls,
            imap_username=self.imap_username or self.email,
            verify_tls=self.verify_tls,
            smtp_host=self.smtp_host or p.smtp_host,
            smtp_port=self.smtp_port or (p.smtp_port if (self.smtp_host or p.smtp_host) else None),
            smtp_tls=smtp_tls,
            smtp_username=self.smtp_username or self.imap_username or self.email,
            imap_tls_probe=imap_probe,
            smtp_tls_probe=smtp_probe,
        )


def _port_for_tls(tls: TlsMode) -> int:
    return 993 if tls == "ssl" else 143


@dataclass(frozen=True)
class ResolvedGrant:
    """A grant's connection parameters with every default filled (no secrets)."""

    email: str
    provider: str
    imap_host: str
    imap_port: int
    imap_tls: TlsMode
    imap_username: str
    verify_tls: bool
    smtp_host: str | None
    smtp_port: int | None
    smtp_tls: TlsMode | None
    smtp_username: str | None
    # The TLS mode above is a stand-in until a probe finds it (a port without a TLS mode).
    imap_tls_probe: bool = False
    smtp_tls_probe: bool = False
