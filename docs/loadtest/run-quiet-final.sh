#!/bin/bash
cd /work/main
M=/work/tools/s6/measure2
for w in 1 1 2; do
  uptime >> $M/restart.log; echo "workers=$w" >> $M/restart.log
  .venv/bin/python -m loadtest.bench_restart --calls 100 --workers $w >> $M/restart.log 2>&1
done
uptime > $M/nodes.log
.venv/bin/toneguard loadtest config/loadtest/steady-300.toml --nodes 1,2 --no-progress --report $M/steady-nodes >> $M/nodes.log 2>&1; echo "rc=$?" >> $M/nodes.log
uptime >> $M/nodes.log
uptime > $M/workers.log
.venv/bin/toneguard loadtest config/loadtest/steady-300.toml --workers 2 --no-progress --report $M/steady-workers2 >> $M/workers.log 2>&1; echo "rc=$?" >> $M/workers.log
uptime >> $M/workers.log
echo done > $M/DONE
