"""`depgate wait <type> ...`: the program inside every depgate init container.

Standard library only, and lean imports at module level: it starts in every pod. Follow it by file:

  cli.py      main(argv): parse, build the check, run the loop, write the termination log
  config.py   flags -> frozen config dataclasses (pure; ConfigError names the flag)
  reasons.py  the reason classes, Result, exception -> Result classification (pure)
  backoff.py  exponential backoff with jitter, capped at --period (pure)
  statelog.py one stderr line per change of state; termination-log messages (pure formatting)
  loop.py     retry loop: per-attempt deadline (worker thread, at most 2 alive), overall --timeout
  resp.py     RESP encoding/parsing and Redis reply classification (pure)
  netio.py    bounded I/O: every socket call armed with what is left of the attempt; sized reads
  checks.py   tcp, redis, http, dns, download (I/O; ssl/http.client/hashlib imported lazily)
  status_watch.py  `depgate wait verdict`: GET + WATCH of the DependencyPolicy until its status says
              the operator's verdict on the precondition is Satisfied (the verdicts themselves:
              depgate.verdicts, in the operator)
"""
