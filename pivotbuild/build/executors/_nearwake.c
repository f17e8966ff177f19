/* The build loop's wait, woken on the core a stage's exit leaves free (Linux).
 *
 * The loop sleeps in epoll_wait until a stage's pipe closes or its pidfd
 * says it exited.  Both wake the loop asynchronously, while the exiting
 * process still runs, so the kernel queues the loop on the core it last ran
 * on.  Where the other stage runs there, the loop waits behind it (until its
 * slice ends, often the whole stage), and the core the exit leaves sits idle
 * meanwhile: the kernel's idle balancing does not pull a task that ran there
 * so recently.  On compare.py's small lattice at -j2, traced with
 * `perf sched` (docs/performance.md, issue 13's thirty-ninth session): two
 * wakeups in five went to the other core, and 120 to 160 ms of a core's time
 * a build passed so, about 0.6 ms at a time.
 *
 * The notice a parent gets of its child's exit is the one synchronous
 * wakeup of an exit: the kernel queues whoever waits for it on the exiting
 * child's own core, where it runs as soon as the child is gone.  So a
 * thread of ours waits for it (`waitid` with WNOWAIT: it reaps nothing; the
 * loop reaps its stages as before), and, while the loop sleeps in `wait`,
 * sets the loop's thread to that core alone: the loop then runs there, on
 * the core just freed.  The loop takes back the mask it had as soon as its
 * wait returns, before it can start anything (a stage inherits the mask of
 * the thread that clones it).
 *
 * What keeps it harmless:
 * - the thread moves a thread only while that thread sleeps in `wait` and is
 *   the only one there (both under one lock), and to a core its mask allows;
 * - nothing is reaped, so every process's owner still gets its status;
 * - the thread blocks every signal (they stay the main thread's);
 * - a child of a fork has no such thread, and starts its own on its first
 *   wait;
 * - a zombie nobody reaps (an owner that waits later) leaves the thread
 *   parked, looking again once per wait, and the loop's wakeups as they were;
 *   so does a process without children, until its next wait (the loop starts
 *   its stages before it waits for them).
 *
 * The same thread lets the standby go (local.py, `stand_by`): the next stage,
 * started ahead while every place was taken and held before its exec on a
 * socket (_clonespawn.c's gate).  The loop names the running stages whose
 * place it may take (`arm`, `slots`: each one's pid and declared outputs);
 * at the exit of one of them with status 0 and every output there (as the
 * loop's capture stats them: a stage that left one out has failed, and no
 * stage starts after it), the thread sends 'g', and the standby runs on the
 * core the exit freed, long before the loop has recorded the stage that
 * ended.  The loop then claims it (`claim`: when it went, or it is let go
 * now), or ends it while it is still held (`cancel`).  One standby at a time,
 * its state under `lock` as the rest; `arm` and a wait end the thread's parking.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <string.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if !defined(__linux__)
#error "_nearwake: Linux only (poller.py uses select.epoll elsewhere)"
#endif

#define EVENTS 256 /* ready descriptors taken per epoll_wait: more wait for the next */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t turn = PTHREAD_COND_INITIALIZER;
/* All below under `lock`. */
static int started;        /* the waiting thread runs (in this process) */
static int sleepers;       /* threads inside `wait` */
static pid_t sleeper;      /* the one sleeper's thread id, 0 unless exactly one */
static pid_t moved;        /* the thread the waiting thread moved, 0 if none */
static cpu_set_t moved_from; /* its mask before, which it takes back */
static int parked;         /* the waiting thread waits for the next `wait` */
static unsigned long waits; /* counts `wait`s, for the parked thread */
static unsigned long moves; /* counts moves (for the tests) */
/* The standby: a stage started and held before its exec, until a place frees. */
#define SLOTS 64
static int gate_w = -1;       /* its gate's write end while it is held; -1 once let go (or none) */
static pid_t slots[SLOTS];    /* the stages whose clean exit frees its place */
static char *made[SLOTS];     /* each one's declared outputs, NUL-terminated, one after another */
static Py_ssize_t made_len[SLOTS];
static int nslots;
static int let_go;            /* let go by the waiting thread, not yet claimed */
static double let_go_at;      /* when (CLOCK_MONOTONIC seconds) */


static __thread pid_t own_tid;

static double now_s(void);

/* The standby let go (under `lock`): 'g' to go on, anything else to end. */
static void open_gate(char c) {
    ssize_t r;
    do
        r = send(gate_w, &c, 1, MSG_NOSIGNAL); /* (a socket: no SIGPIPE where the standby is gone) */
    while (r < 0 && errno == EINTR);
    close(gate_w);
    gate_w = -1;
}

/* Whether `pid` is a slot whose declared outputs all exist (as the loop's
 * capture stats them: a stage that exits 0 without one has failed, and no
 * stage starts after it). */
static int slot_freed(pid_t pid) {
    for (int i = 0; i < nslots; i++) {
        if (slots[i] != pid)
            continue;
        struct stat st;
        for (const char *path = made[i]; path < made[i] + made_len[i]; path += strlen(path) + 1)
            if (stat(path, &st) != 0)
                return 0;
        return 1;
    }
    return 0;
}

static void drop_slots(void) {
    for (int i = 0; i < nslots; i++)
        PyMem_RawFree(made[i]);
    nslots = 0;
}

static void move_sleeper_here(void) {
    if (sleeper == 0 || moved != 0)
        return;
    int cpu = sched_getcpu();
    cpu_set_t mask, here;
    if (cpu < 0 || sched_getaffinity(sleeper, sizeof mask, &mask) != 0)
        return;
    if (!CPU_ISSET(cpu, &mask) || CPU_COUNT(&mask) < 2)
        return; /* not a core it may use; or it has one core only */
    CPU_ZERO(&here);
    CPU_SET(cpu, &here);
    if (sched_setaffinity(sleeper, sizeof here, &here) == 0) {
        moved = sleeper;
        moved_from = mask;
        moves++;
    }
}

static void *watch_exits(void *arg) {
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pid_t seen = 0;
    for (;;) {
        siginfo_t info;
        info.si_pid = 0;
        /* Blocks until a child of this process has exited, or returns one
         * that has and is not yet reaped (WNOWAIT: left for its owner). */
        int r = waitid(P_ALL, 0, &info, WEXITED | WNOWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        pthread_mutex_lock(&lock);
        if (r == 0 && info.si_pid != 0) {
            /* (A zombie seen before, not yet reaped, frees a place as well: the
             * standby armed since may take it.) */
            if (gate_w >= 0 && info.si_code == CLD_EXITED && info.si_status == 0 && slot_freed(info.si_pid)) {
                open_gate('g');
                let_go = 1;
                let_go_at = now_s();
            }
            if (info.si_pid != seen) {
                seen = info.si_pid;
                move_sleeper_here();
            }
        }
        /* Until the next wait, or the next standby armed: by then the child
         * is usually reaped (else waitid returns it again, and it is passed
         * over, or lets the new standby go). */
        unsigned long now = waits;
        parked = 1;
        while (waits == now)
            pthread_cond_wait(&turn, &lock);
        parked = 0;
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

static void forked_child(void) {
    pthread_mutex_init(&lock, NULL);
    pthread_cond_init(&turn, NULL);
    started = sleepers = parked = 0;
    gate_w = -1; /* (the parent's standby: not ours to let go; its slots' memory left) */
    nslots = let_go = 0;
    sleeper = moved = 0;
    own_tid = 0;
}

/* The waiting thread, started once (under `lock`). */
static void start_watching(void) {
    static int registered;
    if (!registered) {
        if (pthread_atfork(NULL, NULL, forked_child) != 0)
            return;
        registered = 1;
    }
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0)
        return;
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    started = pthread_create(&thread, &attr, watch_exits, NULL) == 0 ? 1 : -1; /* (-1: not tried again) */
    pthread_attr_destroy(&attr);
}

static int epoll_wait_once(int epfd, struct epoll_event *events, int ms) {
    if (ms == 0) /* (a look, not a sleep: nothing to move, and the thread left parked) */
        return epoll_wait(epfd, events, EVENTS, 0);
    if (own_tid == 0)
        own_tid = (pid_t)syscall(SYS_gettid);
    pthread_mutex_lock(&lock);
    if (started == 0)
        start_watching();
    sleepers++;
    sleeper = sleepers == 1 ? own_tid : 0;
    waits++;
    if (parked)
        pthread_cond_signal(&turn);
    pthread_mutex_unlock(&lock);

    int n = epoll_wait(epfd, events, EVENTS, ms);
    int err = errno;

    int back = 0;
    cpu_set_t mask;
    pthread_mutex_lock(&lock);
    sleepers--;
    sleeper = 0; /* (another sleeper left: it is moved no more until the next wait) */
    if (moved == own_tid) {
        back = 1;
        mask = moved_from;
        moved = 0;
    }
    pthread_mutex_unlock(&lock);
    if (back)
        sched_setaffinity(0, sizeof mask, &mask);
    errno = err;
    return n;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

PyDoc_STRVAR(wait_doc,
"wait(epfd, timeout) -> list of descriptors\n\n"
"The descriptors of epoll set `epfd` ready to read, waiting at most `timeout`\n"
"seconds (rounded up to the millisecond), as select.epoll.poll: a signal\n"
"whose handler raises ends it with that exception, any other resumes it.\n"
"Meanwhile the thread may be moved to the core a child's exit frees, and\n"
"has its own mask back before this returns.");

static PyObject *near_wait(PyObject *module, PyObject *args) {
    int epfd;
    double timeout;
    if (!PyArg_ParseTuple(args, "id:wait", &epfd, &timeout))
        return NULL;
    double deadline = timeout < 0 ? -1.0 : now_s() + timeout;
    struct epoll_event events[EVENTS];
    int n;
    for (;;) {
        int ms = -1;
        if (deadline >= 0) {
            double left = (deadline - now_s()) * 1000.0;
            ms = left <= 0 ? 0 : left >= INT_MAX ? INT_MAX : (int)left + (left > (int)left);
        }
        Py_BEGIN_ALLOW_THREADS
        n = epoll_wait_once(epfd, events, ms);
        Py_END_ALLOW_THREADS
        if (n >= 0)
            break;
        if (errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals() < 0) /* (PEP 475: a handler's exception ends the wait) */
            return NULL;
    }
    PyObject *ready = PyList_New(n);
    if (ready == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *fd = PyLong_FromLong(events[i].data.fd);
        if (fd == NULL) {
            Py_DECREF(ready);
            return NULL;
        }
        PyList_SET_ITEM(ready, i, fd);
    }
    return ready;
}

PyDoc_STRVAR(moves_doc, "moves() -> int\n\nHow many times a sleeping thread was moved so far (in this process).");

static PyObject *moves_made(PyObject *module, PyObject *noargs) {
    pthread_mutex_lock(&lock);
    unsigned long count = moves;
    pthread_mutex_unlock(&lock);
    return PyLong_FromUnsignedLong(count);
}



/* Slots from `pairs`, a sequence of (pid, outputs: bytes, each path ended
 * by a NUL), at most SLOTS: into `pids`, `paths` (copies) and `lens`; the
 * count, or -1 with an exception. */
static int slots_of(PyObject *pairs, pid_t *pids, char **paths, Py_ssize_t *lens) {
    PyObject *seq = PySequence_Fast(pairs, "slots");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int count = 0;
    for (Py_ssize_t i = 0; i < n && count < SLOTS; i++) {
        long pid;
        const char *outs;
        Py_ssize_t len;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "ly#:slot", &pid, &outs, &len))
            goto fail;
        if (len > 0 && outs[len - 1] != '\0') {
            PyErr_SetString(PyExc_ValueError, "slot: each output path ends with a NUL");
            goto fail;
        }
        char *copy = PyMem_RawMalloc(len ? (size_t)len : 1);
        if (copy == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(copy, outs, (size_t)len);
        pids[count] = (pid_t)pid;
        paths[count] = copy;
        lens[count++] = len;
    }
    Py_DECREF(seq);
    return count;
fail:
    for (int i = 0; i < count; i++)
        PyMem_RawFree(paths[i]);
    Py_DECREF(seq);
    return -1;
}

/* The slots taken from `slots_of` (under `lock`). */
static void set_slots_locked(pid_t *pids, char **paths, Py_ssize_t *lens, int count) {
    drop_slots();
    memcpy(slots, pids, sizeof(pid_t) * (size_t)count);
    memcpy(made, paths, sizeof(char *) * (size_t)count);
    memcpy(made_len, lens, sizeof(Py_ssize_t) * (size_t)count);
    nslots = count;
}

PyDoc_STRVAR(arm_doc,
"arm(gate, slots)\n\n"
"A standby is held on socket `gate` (its write end, ours from now on): the\n"
"waiting thread sends it 'g', and closes it, at the exit with status 0 of\n"
"any of `slots`, (pid, outputs) pairs, if each of its outputs (bytes: paths,\n"
"each ended by a NUL) exists then; else `claim` or `cancel` does.");

static PyObject *arm(PyObject *module, PyObject *args) {
    int fd;
    PyObject *pairs;
    pid_t pids[SLOTS];
    char *paths[SLOTS];
    Py_ssize_t lens[SLOTS];
    if (!PyArg_ParseTuple(args, "iO:arm", &fd, &pairs))
        return NULL;
    int count = slots_of(pairs, pids, paths, lens);
    if (count < 0)
        return NULL;
    pthread_mutex_lock(&lock);
    if (gate_w >= 0)
        open_gate('x');
    gate_w = fd;
    set_slots_locked(pids, paths, lens, count);
    let_go = 0;
    waits++; /* (the waiting thread looks again now: a stage may have exited meanwhile) */
    if (parked)
        pthread_cond_signal(&turn);
    pthread_mutex_unlock(&lock);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(slots_doc,
"slots(slots)\n\n"
"The stages whose clean exit lets the standby go are now `slots` (as `arm`'s;\n"
"none: only `claim` lets it go).");

static PyObject *set_slots(PyObject *module, PyObject *pairs) {
    pid_t pids[SLOTS];
    char *paths[SLOTS];
    Py_ssize_t lens[SLOTS];
    int count = slots_of(pairs, pids, paths, lens);
    if (count < 0)
        return NULL;
    pthread_mutex_lock(&lock);
    set_slots_locked(pids, paths, lens, count);
    pthread_mutex_unlock(&lock);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(gate_doc,
"gate() -> (theirs, ours)\n\n"
"A new gate: a pair of connected sockets, close-on-exec, the standby's end\n"
"and ours (`arm` takes ours).");

static PyObject *new_gate(PyObject *module, PyObject *noargs) {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("ii", fds[0], fds[1]);
}

PyDoc_STRVAR(went_doc, "went() -> bool\n\nWhether the waiting thread has let the standby go (not yet claimed).");

static PyObject *went(PyObject *module, PyObject *noargs) {
    pthread_mutex_lock(&lock);
    int gone = let_go;
    pthread_mutex_unlock(&lock);
    return PyBool_FromLong(gone);
}

PyDoc_STRVAR(claim_doc,
"claim() -> float\n\n"
"The standby goes on: when it was let go (time.monotonic's clock), now if it\n"
"was still held (let go here); -1.0 if there is none.");

static PyObject *claim(PyObject *module, PyObject *noargs) {
    double at = -1.0;
    pthread_mutex_lock(&lock);
    if (let_go) {
        at = let_go_at;
        let_go = 0;
    } else if (gate_w >= 0) {
        open_gate('g');
        at = now_s();
    }
    drop_slots();
    pthread_mutex_unlock(&lock);
    return PyFloat_FromDouble(at);
}

PyDoc_STRVAR(cancel_doc,
"cancel() -> bool\n\n"
"Ends the standby if it is still held (True: it exits without its exec); False\n"
"if it was let go (it runs: claim it) or there is none.");

static PyObject *cancel(PyObject *module, PyObject *noargs) {
    int ended = 0;
    pthread_mutex_lock(&lock);
    if (gate_w >= 0 && !let_go) {
        open_gate('x');
        ended = 1;
    }
    drop_slots();
    pthread_mutex_unlock(&lock);
    return PyBool_FromLong(ended);
}

static PyMethodDef methods[] = {
    {"wait", near_wait, METH_VARARGS, wait_doc},
    {"arm", arm, METH_VARARGS, arm_doc},
    {"gate", new_gate, METH_NOARGS, gate_doc},
    {"slots", set_slots, METH_O, slots_doc},
    {"went", went, METH_NOARGS, went_doc},
    {"claim", claim, METH_NOARGS, claim_doc},
    {"cancel", cancel, METH_NOARGS, cancel_doc},
    {"moves", moves_made, METH_NOARGS, moves_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_nearwake", "The build loop's wait, woken on the core an exit frees (see the source).",
    -1, methods,
};

/* Raised with every change to what `wait` and `moves` take or give: poller.py
 * leaves a module built from another version alone. */
#define API 2

PyMODINIT_FUNC PyInit__nearwake(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "API", API) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
