"""Folder roles: SPECIAL-USE attributes first (RFC 6154), then well-known and localized names."""

from __future__ import annotations

SPECIAL_USE = {
    "\\inbox": "inbox",
    "\\sent": "sent",
    "\\drafts": "drafts",
    "\\trash": "trash",
    "\\junk": "junk",
    "\\archive": "archive",
    "\\all": "all",
    "\\flagged": "flagged",
}

# Lower-cased last path component -> role. Provider spellings and common localizations.
NAMES = {
    "inbox": "inbox",
    # sent
    "sent": "sent",
    "sent items": "sent",
    "sent messages": "sent",
    "sent mail": "sent",
    "sent-mail": "sent",
    "outbox": "sent",
    "gesendet": "sent",
    "gesendete elemente": "sent",
    "gesendete objekte": "sent",
    "envoyés": "sent",
    "messages envoyés": "sent",
    "éléments envoyés": "sent",
    "enviados": "sent",
    "elementos enviados": "sent",
    "posta inviata": "sent",
    "inviata": "sent",
    "verzonden": "sent",
    "verzonden items": "sent",
    "skickat": "sent",
    "skickade objekt": "sent",
    "sendt": "sent",
    "wysłane": "sent",
    "отправленные": "sent",
    "已发送": "sent",
    "送信済み": "sent",
    "itens enviados": "sent",
    # drafts
    "drafts": "drafts",
    "draft": "drafts",
    "entwürfe": "drafts",
    "brouillons": "drafts",
    "borradores": "drafts",
    "bozze": "drafts",
    "concepten": "drafts",
    "utkast": "drafts",
    "kladder": "drafts",
    "wersje robocze": "drafts",
    "черновики": "drafts",
    "草稿": "drafts",
    "rascunhos": "drafts",
    "下書き": "drafts",
    # trash
    "trash": "trash",
    "deleted items": "trash",
    "deleted messages": "trash",
    "deleted": "trash",
    "bin": "trash",
    "papierkorb": "trash",
    "gelöschte elemente": "trash",
    "gelöschte objekte": "trash",
    "corbeille": "trash",
    "éléments supprimés": "trash",
    "papelera": "trash",
    "elementos eliminados": "trash",
    "cestino": "trash",
    "prullenbak": "trash",
    "verwijderde items": "trash",
    "papperskorgen": "trash",
    "kosz": "trash",
    "корзина": "trash",
    "удаленные": "trash",
    "已删除": "trash",
    "ゴミ箱": "trash",
    "lixeira": "trash",
    "lixo": "trash",
    # junk
    "junk": "junk",
    "spam": "junk",
    "bulk mail": "junk",
    "bulk": "junk",
    "junk e-mail": "junk",
    "junk email": "junk",
    "junk mail": "junk",
    "spamverdacht": "junk",
    "courrier indésirable": "junk",
    "indésirables": "junk",
    "correo no deseado": "junk",
    "posta indesiderata": "junk",
    "ongewenste e-mail": "junk",
    "skräppost": "junk",
    "спам": "junk",
    "垃圾邮件": "junk",
    "迷惑メール": "junk",
    # archive / all
    "archive": "archive",
    "archives": "archive",
    "archiv": "archive",
    "archivo": "archive",
    "archivio": "archive",
    "archief": "archive",
    "arkiv": "archive",
    "архив": "archive",
    "all mail": "all",
    "[gmail]/all mail": "all",
    "alle nachrichten": "all",
}


def detect_role(
    name: str, attributes: tuple[str, ...] | list[str], delimiter: str | None
) -> str | None:
    """The role of a folder from its SPECIAL-USE attributes, else from its name.

    Args:
        name: The decoded folder name, with hierarchy (``INBOX.Sent``, ``[Gmail]/Sent Mail``).
        attributes: LIST attributes as the server sent them.
        delimiter: The hierarchy delimiter, if any.

    Returns:
        One of ``inbox sent drafts trash junk archive all flagged`` or None.
    """
    if name.upper() == "INBOX":
        return "inbox"
    for attr in attributes:
        role = SPECIAL_USE.get(attr.lower())
        if role:
            return role
    lowered = name.lower()
    if lowered in NAMES:
        return NAMES[lowered]
    # "INBOX.Sent", "INBOX/Drafts", "[Gmail]/Trash": the leaf decides, one level deep only
    if delimiter and delimiter in name:
        parent, _, leaf = name.rpartition(delimiter)
        if "/" not in parent.strip(delimiter) and leaf.lower() in NAMES:
            role = NAMES[leaf.lower()]
            return None if role == "inbox" else role
    return None
