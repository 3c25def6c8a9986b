"""``search_query_native``: IMAP SEARCH criteria answered from the store or by the server.

- :mod:`pipeline.search.criteria` parses the criteria (RFC 3501 / 9051 search keys; a bare word
  means TEXT) into a small AST, bounded in length, nesting and terms, and writes an AST back as
  IMAP criteria for the server;
- :mod:`pipeline.search.store` turns an AST whose every key the stored mail can answer exactly
  into a SQL condition (trigram indexes of the search rows, migration 0321, narrow; an exact
  substring check with Dovecot's case folding decides);
- :mod:`pipeline.search.server` runs ``UID SEARCH`` in each folder for the rest and maps the
  UIDs to stored message ids;
- :mod:`pipeline.search.tables` is ``api_message_search``, each message's search text, folded
  once.
"""
