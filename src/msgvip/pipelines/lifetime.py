"""Helper processes end with the process that started them, however it ends (SIGKILL included).

`msgvip extract` decodes clips in DataLoader workers forked by a multiprocessing forkserver. When
the extract process is killed, nothing in torch or multiprocessing ends them, because each waits
for the other:

- a torch worker exits only when its OS parent changes, and its OS parent is the forkserver;
- the forkserver exits only when every holder of its "alive" pipe is gone, and every worker holds
  one (multiprocessing hands it to each child it forks).

So a killed run left its forkserver, its workers and the resource tracker running for good (16
kills left 30 processes, 2.2 GB). Ending the workers breaks the cycle: the forkserver then reads
end-of-file on its alive pipe and exits, and the resource tracker exits after the last holder of
its pipe. Measured: all of them are gone about 1 s after the kill, or about 5 s when the kill
lands while the forkserver is still importing torch (it first serves the requests already sent).

Workers of a dask LocalCluster need nothing from here. A LocalCluster's nannies run inside the
client process, and each worker process they start exits when the parent's end of a pipe closes
(``distributed.process.AsyncProcess._immediate_exit_when_closed``).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from multiprocessing.process import BaseProcess


def exit_with_parent(worker_id: int | None = None) -> None:
    """End this process as soon as the process that started it is gone, however that ends.

    Call it first thing in a process started by multiprocessing. It takes ``worker_id`` and
    ignores it, so it can be a DataLoader's ``worker_init_fn``. The parent is the process that
    created the ``Process`` object (:func:`multiprocessing.parent_process`), which is not always
    the OS parent: a forkserver's child watches the process that asked the forkserver for it.

    A daemon thread waits on the parent's sentinel: the read end of a pipe whose write end stays
    open in the parent alone. The kernel closes that end when the parent dies, SIGKILL included.
    A parent that died before this call has left it closed already, so no window exists in which
    the death is missed.

    ``prctl(PR_SET_PDEATHSIG)`` would not do here. It watches the OS parent, so the forkserver
    would need arming too, against a pid nobody passes it. It also fires when the parent *thread*
    exits, so a forkserver started from a short-lived thread would die with that thread and take
    running workers with it. And it exists only on Linux.

    Warning:
        The thread needs the GIL to run. A worker stuck in C code that holds the GIL outlives its
        parent until that call returns.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        raise RuntimeError("exit_with_parent() ends a process started by multiprocessing when its parent ends; call it in the child, not the main process")
    threading.Thread(target=_exit_after, args=(parent,), name="msgvip-exit-with-parent", daemon=True).start()


def _exit_after(parent: BaseProcess) -> None:
    parent.join()  # returns when the sentinel reads end-of-file: the parent is gone
    os._exit(1)  # no cleanup: whatever it would flush was meant for the dead parent
