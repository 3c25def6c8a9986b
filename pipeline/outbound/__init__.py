"""Outbound mail: composing a send (:mod:`.compose`), queueing it (:mod:`.sending`) and waiting for
what it came to, with the answer kept for its idempotency key (:mod:`.submit`), the send outbox
(:mod:`.outbox`), SMTP connections (:mod:`.smtp`), the drain that sends what is due
(:mod:`.deliver`), the copy it files in Sent (:mod:`.sent_copy`) and what those two both name: a
drain's tally and what it needs of its process (:mod:`.drains`). The API (or the CLI, a task, a
draft's send) writes rows; workers send them. Outbound never imports drafts: drafts send through
it."""
