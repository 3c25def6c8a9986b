"""Threads: the lists and pages the API reads, and a thread's view."""
