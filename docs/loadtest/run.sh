#!/bin/bash
# Quiet-host measurements, run sequentially at session start (load ~0.5).
cd /work/main
M=/work/tools/s6/measure
for i in 1 2 3; do
  uptime >> $M/restart.log
  .venv/bin/python -m loadtest.bench_restart --calls 100 >> $M/restart.log 2>&1
done
for i in 1 2; do
  uptime >> $M/restart2w.log
  .venv/bin/python -m loadtest.bench_restart --calls 100 --workers 2 >> $M/restart2w.log 2>&1
done
uptime > $M/steady.log
.venv/bin/toneguard loadtest config/loadtest/steady-300.toml --no-progress --report $M/steady-300-tg >> $M/steady.log 2>&1; echo "rc=$?" >> $M/steady.log
uptime >> $M/steady.log
.venv/bin/toneguard loadtest config/loadtest/steady-300.toml --target rtpengine --no-progress --report $M/steady-300-rtpe >> $M/steady.log 2>&1; echo "rc=$?" >> $M/steady.log
uptime > $M/ramp.log
.venv/bin/toneguard loadtest config/loadtest/ramp.toml --find-capacity --no-progress --report $M/ramp >> $M/ramp.log 2>&1; echo "rc=$?" >> $M/ramp.log
uptime >> $M/ramp.log
echo done > $M/DONE
