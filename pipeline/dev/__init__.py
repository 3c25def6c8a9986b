"""Dev tooling, not the domain: real servers on one machine, the ``up`` supervisor, demo mail.

``imap-pipeline up`` and the test suite start the same classes::

    EmbeddedPostgres   pipeline.dev.postgres   initdb + postgres, database imap_pipeline
    EmbeddedRedis      pipeline.dev.redis      redis-server with an append-only file
    LocalDovecot       pipeline.dev.dovecot    IMAP server with users, maildirs, optional TLS

What they share: ``processes`` (each server a direct child in its own process group, stopped
in order), ``folders`` (system users and data folders they can reach, as root) and ``ports``
(free ports on 127.0.0.1).

``up`` runs the whole pipeline in one terminal (``imap-pipeline up``; its Procfile roles in
``roles``, its demo mailbox in ``demo``); ``mailgen`` writes realistic mailboxes (in the
languages of ``mailgen_locales``) and ``seed`` puts them into a server. The domain never
imports this package; only the CLI's ``up`` command and the tests do.
"""
