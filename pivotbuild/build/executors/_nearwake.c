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
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
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

static __thread pid_t own_tid;

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
        if (r == 0 && info.si_pid != 0 && info.si_pid != seen) {
            seen = info.si_pid;
            move_sleeper_here();
        }
        /* Until the next wait: by then the child is usually reaped (else
         * waitid returns it again, and it is passed over). */
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

static PyMethodDef methods[] = {
    {"wait", near_wait, METH_VARARGS, wait_doc},
    {"moves", moves_made, METH_NOARGS, moves_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_nearwake", "The build loop's wait, woken on the core an exit frees (see the source).",
    -1, methods,
};

/* Raised with every change to what `wait` and `moves` take or give: poller.py
 * leaves a module built from another version alone. */
#define API 1

PyMODINIT_FUNC PyInit__nearwake(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "API", API) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
