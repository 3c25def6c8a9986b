"""The API application's own records: its registered redirect URIs and the single-use
authorization codes of hosted auth (:mod:`.tables`, read and written by :mod:`.repository`);
which client and redirect URIs a sign-in may name (:mod:`.clients`); issuing and redeeming a
code (:mod:`.codes`); the hosted sign-in's signed form state and its sign-in (:mod:`.hosted`);
the code exchange's decisions, ``/connect/token`` without HTTP (:mod:`.token`)."""
