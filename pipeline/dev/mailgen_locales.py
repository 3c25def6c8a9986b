# ruff: noqa: RUF001 - the Cyrillic text is meant to be Cyrillic
"""The languages demo mail is written in (:mod:`pipeline.dev.mailgen`): per locale its charset,
its share of the mail, names, subjects and sentences; plus spam subjects and senders, the
domains of contacts and the time zones their Date headers carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta, timezone


@dataclass(frozen=True)
class Locale:
    """One language of demo mail: its charset, share of the mail, and the words it is made of."""

    charset: str
    weight: float
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    subjects: tuple[str, ...]
    sentences: tuple[str, ...]
    greeting: str
    closing: str
    reply_prefix: str = "Re: "


LOCALES: tuple[Locale, ...] = (
    Locale(
        "us-ascii",
        0.62,
        ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack"),
        ("Smith", "Johnson", "Brown", "Taylor", "Miller", "Wilson", "Moore", "Clark", "Lewis"),
        (
            "Quarterly report",
            "Lunch on Friday?",
            "Invoice {n}",
            "Meeting notes",
            "Your order #{n} has shipped",
            "Project kickoff",
            "Weekend plans",
            "Re-scheduling our call",
            "Slides for tomorrow",
            "Welcome to the team",
            "Reminder: dentist appointment",
            "Budget review {n}",
        ),
        (
            "Thanks for sending this over so quickly.",
            "Could we move the meeting to Thursday afternoon?",
            "I have attached the latest numbers for your review.",
            "Let me know if anything is unclear.",
            "The deployment went smoothly last night.",
            "We should revisit the timeline before the end of the month.",
            "I will be out of office next week.",
            "Please find the summary of our discussion below.",
            "The client approved the proposal this morning.",
            "Happy to help with the migration if needed.",
        ),
        "Hi {name},",
        "Best regards,",
    ),
    Locale(
        "utf-8",
        0.12,
        ("Jürgen", "Zoë", "Søren", "Ana", "Łukasz", "Chloé", "Mia", "José", "Ingrid"),
        ("Müller", "Ørsted", "García", "Kowalski", "Næss", "Dvořák", "Weiß", "Ångström"),
        (
            "Grüße aus München ☀",
            "Café-Treffen am Donnerstag?",
            "Résumé of the Zürich workshop",
            "Angebot Nr. {n} — bitte prüfen",
            "Skål! Fotos vom Wochenende 📷",
            "Zaproszenie na spotkanie",
        ),
        (
            "Vielen Dank für die schnelle Rückmeldung.",
            "Können wir das Treffen auf Donnerstag verschieben?",
            "Anbei die überarbeitete Präsentation — Änderungen sind markiert.",
            "Das Wetter in Zürich war großartig. ☀",
            "Dziękuję za pomoc przy wdrożeniu.",
            "Hälsningar från Göteborg!",
        ),
        "Hallo {name},",
        "Viele Grüße",
        "AW: ",
    ),
    Locale(
        "iso-8859-1",
        0.1,
        ("François", "Hélène", "Jérôme", "Anaïs", "Zoé", "Björn", "Günther"),
        ("Lefèvre", "Dubois", "Gérard", "Müller", "Bäcker", "Noël"),
        (
            "Réunion de l'équipe à 14h",
            "Facture n° {n}",
            "Votre commande a été expédiée",
            "Congés d'été",
            "Bestätigung Ihrer Bestellung Nr. {n}",
            "À propos du déménagement",
        ),
        (
            "Merci pour votre réponse rapide.",
            "Pourriez-vous vérifier les chiffres du trimestre ?",
            "Je serai absent la semaine prochaine.",
            "Voilà le compte rendu de la réunion de mercredi.",
            "Ich schicke Ihnen die Unterlagen morgen früh.",
            "Le café était excellent, à refaire !",
        ),
        "Bonjour {name},",
        "Cordialement,",
        "RE: ",
    ),
    Locale(
        "koi8-r",
        0.08,
        ("Дмитрий", "Анна", "Сергей", "Ольга", "Николай", "Татьяна"),
        ("Иванов", "Смирнова", "Кузнецов", "Попова", "Соколов"),
        (
            "Отчёт за квартал",
            "Встреча в пятницу",
            "Счёт N {n}",
            "Новости проекта",
            "Поздравляю с днём рождения!",
        ),
        (
            "Спасибо за быстрый ответ.",
            "Можем ли мы перенести встречу на четверг?",
            "Во вложении последние данные по проекту.",
            "Дайте знать, если что-то непонятно.",
            "Хороших выходных!",
        ),
        "Здравствуйте, {name}!",
        "С уважением,",
    ),
    Locale(
        "iso-2022-jp",
        0.08,
        ("太郎", "花子", "健一", "美咲", "翔太"),
        ("山田", "佐藤", "鈴木", "高橋", "田中"),
        (
            "会議のお知らせ",
            "見積書の送付 {n}",
            "打ち合わせの件",
            "ご注文ありがとうございます",
            "週末の予定",
        ),
        (
            "お世話になっております。",
            "資料を添付いたしましたのでご確認ください。",
            "来週の会議について日程を調整させてください。",
            "ご不明な点がございましたらお知らせください。",
            "よろしくお願いいたします。",
        ),
        "{name}様",
        "以上、よろしくお願いいたします。",
    ),
)
SPAM_SUBJECTS = (
    "You have WON a $1,000 gift card!!!",
    "Cheap meds - 90% off today only",
    "URGENT: verify your account now",
    "Make money from home, guaranteed",
    "Re: your unpaid invoice",
)
SPAM_DOMAINS = ("prize-center.biz", "best-deals.top", "secure-verify.info", "promo.click")
DOMAINS = ("example.com", "example.org", "example.net", "mail.example.de", "corp.example.fr")
ZONES = tuple(timezone(timedelta(hours=h)) for h in (-8, -5, 0, 1, 2, 3, 9))
