"""The measurements behind ``whygpu``'s subcommands (ladder, scaling, train)
and the timing helpers they share.  Each ``run_*`` function returns a plain,
JSON-ready dict (a "document" with a ``schema`` field) that the report
writer and the plots read back; nothing here prints except through the
``log`` callback it is given."""
