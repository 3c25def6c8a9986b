"""Outbound mail: composing a send (:mod:`.compose`) and queueing it (:mod:`.sending`), the
send outbox (:mod:`.outbox`), SMTP connections (:mod:`.smtp`) and the drain that sends what is
due (:mod:`.deliver`). The API writes rows; workers send them."""
