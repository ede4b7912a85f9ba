"""Console entry points (ssl-pretrain, ssl-probe, ...).

Thread policy, for every command: OpenMP's threads wait passively. Its default is to spin while waiting
for the other threads of a parallel region; on a CPU shared with other jobs a spinning thread waits for a
descheduled sibling at every region, and a demo ssl-detect run measured 3x slower (0.84 vs 0.28 s per
training image on 2 busy cores). OpenMP reads the variable when torch loads it, which is after this
package is imported: every command module imports torch below this line. ``--threads`` (cli.common.Parser)
sets torch's thread count.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
