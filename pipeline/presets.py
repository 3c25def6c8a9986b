"""Provider presets: where each provider's servers are and how hard we may use them.

A preset fills the IMAP/SMTP host and port when the user gives none, names the Celery queue
family the grant's work goes to (``sync.<queue>``), and carries the limits the listener and the
rate limiter respect. The address's domain picks a preset when none is named; unknown domains
get ``generic`` and must give a host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TlsMode = Literal["ssl", "starttls", "plain"]

IDLE_RENEW_DEFAULT_S = 25 * 60  # RFC 2177: servers may drop IDLE after 29 min; renew well before


@dataclass(frozen=True)
class ProviderPreset:
    """What we know about one provider family."""

    name: str
    imap_host: str | None
    imap_port: int = 993
    imap_tls: TlsMode = "ssl"
    smtp_host: str | None = None
    smtp_port: int = 465
    smtp_tls: TlsMode = "ssl"
    domains: tuple[str, ...] = ()
    idle_renew_s: int = IDLE_RENEW_DEFAULT_S
    max_connections: int = 5  # per account, listener + workers together
    ops_per_second: float = 10.0  # IMAP commands per second, per account
    logins_per_minute: int = 10  # new logins per minute, per account
    app_password_help: str = ""
    stores_sent_mail: bool = False  # the provider files sent mail in Sent by itself

    @property
    def queue(self) -> str:
        """Celery queue for this provider's sync work."""
        return f"sync.{self.name}"


PRESETS: dict[str, ProviderPreset] = {
    p.name: p
    for p in (
        ProviderPreset(
            "yahoo",
            "imap.mail.yahoo.com",
            smtp_host="smtp.mail.yahoo.com",
            domains=(
                "yahoo.com",
                "ymail.com",
                "rocketmail.com",
                "yahoo.co.uk",
                "yahoo.fr",
                "yahoo.de",
                "yahoo.co.jp",
                "yahoo.com.br",
                "yahoo.es",
                "yahoo.it",
            ),
            idle_renew_s=150,  # Yahoo drops IDLE after about 3 minutes
            max_connections=5,
            ops_per_second=5.0,
            logins_per_minute=6,
            app_password_help="Yahoo: Account Info > Account security > Generate app password.",
            stores_sent_mail=True,
        ),
        ProviderPreset(
            "aol",
            "imap.aol.com",
            smtp_host="smtp.aol.com",
            domains=("aol.com", "aim.com", "love.com", "games.com", "wow.com"),
            idle_renew_s=4 * 60,  # AOL drops IDLE after about 5 minutes
            max_connections=5,
            ops_per_second=5.0,
            logins_per_minute=6,
            app_password_help="AOL: Account Info > Account security > Generate app password.",
            stores_sent_mail=True,
        ),
        ProviderPreset(
            "icloud",
            "imap.mail.me.com",
            smtp_host="smtp.mail.me.com",
            smtp_port=587,
            smtp_tls="starttls",
            domains=("icloud.com", "me.com", "mac.com"),
            max_connections=5,
            app_password_help="iCloud: appleid.apple.com > Sign-In and Security > "
            "App-Specific Passwords.",
        ),
        ProviderPreset(
            "gmail",
            "imap.gmail.com",
            smtp_host="smtp.gmail.com",
            domains=("gmail.com", "googlemail.com"),
            max_connections=15,
            app_password_help="Gmail: turn on 2-Step Verification, then myaccount.google.com > "
            "Security > App passwords.",
            stores_sent_mail=True,
        ),
        ProviderPreset(
            "outlook",
            "outlook.office365.com",
            smtp_host="smtp.office365.com",
            smtp_port=587,
            smtp_tls="starttls",
            domains=(
                "outlook.com",
                "hotmail.com",
                "live.com",
                "msn.com",
                "hotmail.co.uk",
                "outlook.fr",
                "hotmail.fr",
                "live.co.uk",
            ),
            max_connections=8,
            app_password_help="Outlook.com: account.microsoft.com > Security > Advanced "
            "security options > App passwords.",
            stores_sent_mail=True,
        ),
        ProviderPreset(
            "fastmail",
            "imap.fastmail.com",
            smtp_host="smtp.fastmail.com",
            domains=("fastmail.com", "fastmail.fm", "messagingengine.com"),
            max_connections=10,
            app_password_help="Fastmail: Settings > Privacy & Security > App passwords.",
        ),
        ProviderPreset(
            "gmx",
            "imap.gmx.net",
            smtp_host="mail.gmx.net",
            smtp_port=587,
            smtp_tls="starttls",
            domains=("gmx.net", "gmx.de", "gmx.com", "gmx.at", "gmx.ch"),
            max_connections=5,
            app_password_help="GMX: Settings > POP3 & IMAP > allow access, use your password.",
        ),
        ProviderPreset(
            "yandex",
            "imap.yandex.com",
            smtp_host="smtp.yandex.com",
            domains=("yandex.com", "yandex.ru", "ya.ru"),
            max_connections=5,
            app_password_help="Yandex: id.yandex.com > Security > App passwords > Mail.",
        ),
        ProviderPreset(
            "zoho",
            "imap.zoho.com",
            smtp_host="smtp.zoho.com",
            domains=("zoho.com", "zohomail.com"),
            max_connections=5,
            app_password_help="Zoho: accounts.zoho.com > Security > App passwords.",
        ),
        ProviderPreset("generic", None, smtp_host=None, max_connections=5),
    )
}


def preset(name: str) -> ProviderPreset:
    """The preset called ``name`` (``generic`` when unknown)."""
    return PRESETS.get(name.lower(), PRESETS["generic"])


def detect(email: str) -> ProviderPreset:
    """Pick a preset from an email address's domain (``generic`` when unknown)."""
    domain = email.rpartition("@")[2].strip().lower()
    for p in PRESETS.values():
        if domain in p.domains:
            return p
    return PRESETS["generic"]


def queue_names() -> list[str]:
    """Every provider sync queue, for workers that serve them all."""
    return [p.queue for p in PRESETS.values()]
