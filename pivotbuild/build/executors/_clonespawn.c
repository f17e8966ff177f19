/* Starting a stage's process without waiting for its exec (Linux, x86-64 and
 * AArch64).
 *
 * glibc's posix_spawn clones with CLONE_VM | CLONE_VFORK: the child runs in
 * our memory until its execve, and the caller sleeps until then.  Where the
 * child is placed on the other core, behind a running stage, the build loop's
 * core sits idle meanwhile (docs/performance.md, the twenty-sixth and
 * twenty-seventh sessions).  `start` clones the same way but without
 * CLONE_VFORK, so the loop goes on at once.  What makes that safe:
 *
 * - the child touches nothing of ours but one block of memory of its own
 *   (its stack, its arguments, its environment, what it reports), made here
 *   and freed only once the kernel has cleared the block's `alive` word
 *   (CLONE_CHILD_CLEARTID: at its exec, or at its exit) -- in practice when
 *   the process has been reaped;
 * - it makes raw system calls only: no C library call that could take a
 *   lock, allocate, or set our thread's `errno` (the child runs with our
 *   thread's TLS);
 * - every signal is blocked across the clone, the child resets the
 *   dispositions it is given before it lets any through: no handler of ours
 *   runs in it.
 *
 * What the child does is what posix_spawn's file actions did in spawn.py:
 * its dispositions reset, a session of its own, descriptors duplicated,
 * closed or opened, its signal mask set, then the exec (searching a PATH
 * when given a bare name, as posix_spawnp).  Where the exec fails and a
 * shell is given, the child puts its stdout back and starts the shell
 * instead (the fallback spawn.py took when posix_spawn raised); what failed
 * last is left in the block for the parent to read once it has reaped it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#if !defined(__linux__) || !defined(__LP64__) || !(defined(__x86_64__) || defined(__aarch64__))
#error "_clonespawn: Linux on x86-64 or AArch64 only (spawn.py uses posix_spawn elsewhere)"
#endif

/* The child's code reads nothing of our thread's TLS (hatch_build.py also
 * compiles with -fno-stack-protector): were the thread that started it to
 * exit before its exec, that memory would be gone. */
#if defined(__has_attribute)
#if __has_attribute(no_stack_protector)
#define CHILD_CODE __attribute__((no_stack_protector))
#endif
#endif
#ifndef CHILD_CODE
#define CHILD_CODE
#endif

#define STACK_BYTES (32 * 1024) /* the child's stack: it uses well under 1 KiB */

static inline CHILD_CODE long sys4(long n, long a, long b, long c, long d) {
#if defined(__x86_64__)
    long ret;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
    return ret;
#else
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
    return x0;
#endif
}

struct kernel_sigaction { /* the kernel's own layout (x86-64's and AArch64's) */
    void *handler;
    unsigned long flags;
    void *restorer;
    unsigned long mask;
};

enum { ACT_DUP = 0, ACT_CLOSE = 1, ACT_OPEN = 2 };

typedef struct {
    char *program; /* with a slash, or a name looked up on `search` */
    char *search;  /* a PATH (every entry absolute), or NULL */
    char **argv;
    char **envp;
    int unblock; /* 1: every signal unblocked; 0: our mask at the start */
} Exec;

typedef struct {
    Exec first;
    Exec shell;    /* started if `first` cannot be (has_shell) */
    int has_shell;
    int shell_stdout; /* the shell's stdout, put back first */
    int nacts;
    int *acts; /* triples: ACT_*, a, b */
    char *open_path; /* ACT_OPEN: a = its flags, onto b */
    int open_mode;
    unsigned long defaults; /* signals reset to their default (bit N - 1: signal N) */
    unsigned long mask; /* ours, as it was */
    char *path_buf;     /* room for a directory of `search` and the name */
    /* written by the child (and the kernel), read by us once it has exited */
    volatile int err;
    volatile int fell_back;
    volatile pid_t alive;
} Block;

static __attribute__((noreturn)) CHILD_CODE void child_fails(Block *b, long ret) {
    b->err = (int)-ret;
    for (;;) sys4(SYS_exit_group, 127, 0, 0, 0);
}

static CHILD_CODE long dup_onto(int fd, int to) {
    if (fd == to) /* inherited as it is: only its close-on-exec flag cleared */
        return sys4(SYS_fcntl, fd, F_SETFD, 0, 0);
    return sys4(SYS_dup3, fd, to, 0, 0);
}

/* Returns only if the exec failed: minus its errno. */
static CHILD_CODE long child_exec(Block *b, const Exec *e) {
    unsigned long mask = e->unblock ? 0 : b->mask;
    sys4(SYS_rt_sigprocmask, SIG_SETMASK, (long)&mask, 0, sizeof mask);
    if (e->search == NULL)
        return sys4(SYS_execve, (long)e->program, (long)e->argv, (long)e->envp, 0);
    /* posix_spawnp's search (glibc's execvpe): a directory where the name is
     * missing or cannot be reached is passed over, one where it cannot be
     * run is remembered, any other failure ends the search; an empty entry
     * is the current directory.  (spawn.py searches only a PATH of absolute
     * entries here.) */
    long failed = -ENOENT;
    const char *dir = e->search;
    for (;;) {
        const char *end = dir;
        while (*end && *end != ':')
            end++;
        char *p = b->path_buf;
        for (const char *s = dir; s < end; s++)
            *p++ = *s;
        if (end > dir)
            *p++ = '/';
        for (const char *s = e->program; *s; s++)
            *p++ = *s;
        *p = '\0';
        long ret = sys4(SYS_execve, (long)b->path_buf, (long)e->argv, (long)e->envp, 0);
        if (ret == -EACCES)
            failed = ret;
        else if (ret != -ENOENT && ret != -ENOTDIR && ret != -ESTALE && ret != -ENODEV && ret != -ETIMEDOUT)
            return ret;
        if (!*end)
            return failed;
        dir = end + 1;
    }
}

static CHILD_CODE int child_main(void *arg) {
    Block *b = arg;
    /* The signals named reset to their default; any other that has a handler
     * of ours too (say, one installed after the list was made), as glibc's
     * posix_spawn does: no handler of ours may run in this child, which
     * shares our memory, in the instant between its unblocking and its exec. */
    struct kernel_sigaction dfl = {SIG_DFL, 0, NULL, 0}, now;
    for (int sig = 1; sig <= 64; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (!(b->defaults & (1UL << (sig - 1)))) {
            if (sys4(SYS_rt_sigaction, sig, 0, (long)&now, sizeof(unsigned long)) < 0 || now.handler == SIG_DFL ||
                now.handler == SIG_IGN)
                continue;
        }
        sys4(SYS_rt_sigaction, sig, (long)&dfl, 0, sizeof(unsigned long));
    }
    long ret = sys4(SYS_setsid, 0, 0, 0, 0);
    if (ret < 0)
        child_fails(b, ret);
    for (int i = 0; i < b->nacts; i++) {
        int kind = b->acts[3 * i], x = b->acts[3 * i + 1], y = b->acts[3 * i + 2];
        if (kind == ACT_CLOSE) {
            sys4(SYS_close, x, 0, 0, 0); /* (one not open: ignored, as glibc 2.29's) */
            continue;
        }
        if (kind == ACT_DUP) {
            ret = dup_onto(x, y);
        } else {
            long fd = sys4(SYS_openat, AT_FDCWD, (long)b->open_path, x, b->open_mode);
            if (fd < 0)
                child_fails(b, fd);
            ret = fd == y ? 0 : sys4(SYS_dup3, fd, y, 0, 0);
            if (fd != y)
                sys4(SYS_close, fd, 0, 0, 0);
        }
        if (ret < 0)
            child_fails(b, ret);
    }
    ret = child_exec(b, &b->first);
    if (b->has_shell) {
        b->fell_back = 1;
        ret = dup_onto(b->shell_stdout, 1);
        if (ret >= 0)
            ret = child_exec(b, &b->shell);
    }
    child_fails(b, ret);
    return 0;
}

/* -- the parent's side ------------------------------------------------------------------- */

static const char *CAPSULE = "pivotbuild._clonespawn.block";

static void block_free(PyObject *capsule) {
    char *memory = PyCapsule_GetPointer(capsule, CAPSULE);
    Block *b = (Block *)(memory + STACK_BYTES);
    /* A child that has neither exec'd nor exited may still be using it: left
     * (never the case once it has been reaped). */
    if (__atomic_load_n(&b->alive, __ATOMIC_ACQUIRE) == 0)
        PyMem_RawFree(memory);
}

/* A str's bytes (UTF-8, as the file system encoding here), or NULL with
 * ValueError where the C library could not be handed it as it is (a
 * surrogate, a NUL): the caller then spawns through os.posix_spawn. */
static const char *text(PyObject *obj, Py_ssize_t *len) {
    if (!PyUnicode_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "expected str");
        return NULL;
    }
    const char *s = PyUnicode_AsUTF8AndSize(obj, len);
    if (s == NULL || (Py_ssize_t)strlen(s) != *len) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "not passed as it is");
        return NULL;
    }
    return s;
}

typedef struct {
    PyObject *argv;  /* a list or tuple of str */
    PyObject *env;   /* a dict of str */
    int env_shared;  /* the first program's dict: its environment is used again, not copied */
} Strings;

/* Bytes `s` needs for its strings, pointers apart (-1 on error). */
static Py_ssize_t strings_size(Strings *s, Py_ssize_t *count) {
    Py_ssize_t total = 0, len;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(s->argv);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (text(PySequence_Fast_GET_ITEM(s->argv, i), &len) == NULL)
            return -1;
        total += len + 1;
    }
    if (s->env_shared) {
        *count += n + 1;
        return total;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0, klen, vlen;
    while (PyDict_Next(s->env, &pos, &key, &value)) {
        const char *k = text(key, &klen);
        if (k == NULL || text(value, &vlen) == NULL)
            return -1;
        if (klen == 0 || memchr(k, '=', (size_t)klen) != NULL) {
            PyErr_SetString(PyExc_ValueError, "not passed as it is");  /* (posix_spawn says what is wrong) */
            return -1;
        }
        total += klen + vlen + 2;
    }
    *count += n + 1 + PyDict_GET_SIZE(s->env) + 1;
    return total;
}

static char *copy(char **cursor, const char *s, Py_ssize_t len) {
    char *at = *cursor;
    memcpy(at, s, (size_t)len);
    at[len] = '\0';
    *cursor += len + 1;
    return at;
}

/* Fills `e`'s argv and envp from `s` (sized by strings_size); `shared_envp`:
 * the environment already filled in, where `s` shares it. */
static void strings_fill(Strings *s, Exec *e, char **shared_envp, char ***ptrs, char **cursor) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(s->argv), len, klen, vlen;
    e->argv = *ptrs;
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *z = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(s->argv, i), &len);
        e->argv[i] = copy(cursor, z, len);
    }
    e->argv[n] = NULL;
    if (s->env_shared) {
        e->envp = shared_envp;
        *ptrs = e->argv + n + 1;
        return;
    }
    e->envp = e->argv + n + 1;
    PyObject *key, *value;
    Py_ssize_t pos = 0, j = 0;
    while (PyDict_Next(s->env, &pos, &key, &value)) {
        const char *k = PyUnicode_AsUTF8AndSize(key, &klen), *v = PyUnicode_AsUTF8AndSize(value, &vlen);
        char *at = *cursor;
        memcpy(at, k, (size_t)klen);
        at[klen] = '=';
        memcpy(at + klen + 1, v, (size_t)vlen);
        at[klen + 1 + vlen] = '\0';
        *cursor += klen + vlen + 2;
        e->envp[j++] = at;
    }
    e->envp[j] = NULL;
    *ptrs = e->envp + j + 1;
}

/* The actions' numbers, exact ints only (no __index__ runs, to change the list
 * under us); kinds and their operands checked. */
static int actions(PyObject *seq, int *into, int can_open) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        long v = PyLong_CheckExact(item) ? PyLong_AsLong(item) : -1;
        if (v < 0 || v > INT_MAX) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "acts: descriptors and flags, as ints from 0");
            return -1;
        }
        into[i] = (int)v;
    }
    for (Py_ssize_t i = 0; i < n; i += 3) {
        if (into[i] > ACT_OPEN || (into[i] == ACT_OPEN && !can_open)) {
            PyErr_SetString(PyExc_ValueError, "acts: 0 (dup), 1 (close) or 2 (open, with open_path)");
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(start_doc,
"start(program, search, argv, env, unblock, acts, open_path, open_mode, defaults, shell) -> (pid, block)\n\n"
"Starts `program` (on the PATH `search`, or None) with `argv` and `env` (a dict)\n"
"in a session of its own, without waiting for its exec; `block` must be kept\n"
"until the process has been reaped.  `acts` are (kind, a, b) triples, done in\n"
"order: 0 `a` duplicated onto `b` (a == b: only inherited), 1 `a` closed,\n"
"2 `open_path` opened with flags `a` and `open_mode` onto `b`.  `defaults`:\n"
"the signals reset to their default, bit N - 1 for signal N (any other with a\n"
"handler is reset too).  `unblock`: every signal unblocked, else\n"
"our mask kept.  `shell`: None, or (program, argv, env or None for the same,\n"
"its stdout) started instead if the first cannot be, with our mask.  Raises\n"
"OSError if the clone fails; ValueError where a string cannot be passed as it\n"
"is (a surrogate, a NUL).");

static PyObject *start(PyObject *module, PyObject *args) {
    PyObject *program, *search, *argv, *env, *acts, *open_path, *shell;
    unsigned long long defaults;
    int unblock, open_mode;
    if (!PyArg_ParseTuple(args, "UOOO!pOOiKO:start", &program, &search, &argv, &PyDict_Type, &env, &unblock, &acts,
                          &open_path, &open_mode, &defaults, &shell))
        return NULL;
    PyObject *shell_argv = NULL, *shell_env = env, *shell_program = NULL;
    int shell_stdout = -1;
    if (shell != Py_None && !PyArg_ParseTuple(shell, "UOOi:shell", &shell_program, &shell_argv, &shell_env,
                                              &shell_stdout))
        return NULL;
    if (shell_env == Py_None)
        shell_env = env;
    if (!PyDict_Check(shell_env))
        return PyErr_Format(PyExc_TypeError, "shell env: expected a dict");

    PyObject *av = NULL, *sv = NULL, *ac = NULL, *result = NULL;
    char *memory = NULL;
    if (!(av = PySequence_Fast(argv, "argv")) || !(ac = PySequence_Fast(acts, "acts")))
        goto done;
    if (shell_argv != NULL && !(sv = PySequence_Fast(shell_argv, "shell argv")))
        goto done;
    Py_ssize_t nacts = PySequence_Fast_GET_SIZE(ac);
    if (nacts % 3) {
        PyErr_SetString(PyExc_ValueError, "acts: triples");
        goto done;
    }

    Py_ssize_t plen, slen = 0, olen = 0, splen = 0, pointers = 0;
    const char *pz = text(program, &plen), *sz = NULL, *oz = NULL, *spz = NULL;
    if (pz == NULL || (search != Py_None && (sz = text(search, &slen)) == NULL) ||
        (open_path != Py_None && (oz = text(open_path, &olen)) == NULL) ||
        (shell_program != NULL && (spz = text(shell_program, &splen)) == NULL))
        goto done;
    Strings first = {av, env, 0}, second = {sv, shell_env, shell_env == env};
    Py_ssize_t bytes = strings_size(&first, &pointers);
    if (bytes < 0)
        goto done;
    if (sv != NULL) {
        Py_ssize_t more = strings_size(&second, &pointers);
        if (more < 0)
            goto done;
        bytes += more;
    }
    bytes += plen + 1 + slen + 1 + olen + 1 + splen + 1 + (slen + plen + 2); /* (the last: the search's buffer) */
    size_t size = STACK_BYTES + sizeof(Block) + (size_t)pointers * sizeof(char *) +
                  (size_t)nacts * sizeof(int) + (size_t)bytes;
    memory = PyMem_RawMalloc(size);
    if (memory == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Block *b = (Block *)(memory + STACK_BYTES);
    memset(b, 0, sizeof *b);
    char **ptrs = (char **)(b + 1);
    b->acts = (int *)(ptrs + pointers);
    char *cursor = (char *)(b->acts + nacts);
    strings_fill(&first, &b->first, NULL, &ptrs, &cursor);
    if (sv != NULL)
        strings_fill(&second, &b->shell, b->first.envp, &ptrs, &cursor);
    if (actions(ac, b->acts, oz != NULL) < 0)
        goto done;
    b->nacts = (int)(nacts / 3);
    b->defaults = (unsigned long)defaults;
    b->first.program = copy(&cursor, pz, plen);
    b->first.search = sz ? copy(&cursor, sz, slen) : NULL;
    b->first.unblock = unblock;
    b->open_path = oz ? copy(&cursor, oz, olen) : NULL;
    b->open_mode = open_mode;
    if (sv != NULL) {
        b->has_shell = 1;
        b->shell.program = copy(&cursor, spz, splen);
        b->shell.search = NULL;
        b->shell.unblock = 0;
        b->shell_stdout = shell_stdout;
    }
    b->path_buf = cursor;

    /* Every signal blocked across the clone (the child starts so, and lets
     * them through only after resetting their dispositions). */
    unsigned long all = ~0UL, old = 0;
    sys4(SYS_rt_sigprocmask, SIG_SETMASK, (long)&all, (long)&old, sizeof all);
    b->mask = old;
    b->alive = 1;
    int pid = clone(child_main, memory + STACK_BYTES - 64, CLONE_VM | CLONE_CHILD_CLEARTID | SIGCHLD, b, NULL, NULL,
                    &b->alive);
    int saved = errno;
    sys4(SYS_rt_sigprocmask, SIG_SETMASK, (long)&old, 0, sizeof old);
    if (pid < 0) {
        errno = saved;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    /* (Were either call below to fail, out of memory, the block is left to the
     * child, which may still use it, and the child to whoever reaps it.) */
    PyObject *capsule = PyCapsule_New(memory, CAPSULE, block_free);
    if (capsule == NULL) {
        memory = NULL;
        goto done;
    }
    memory = NULL;
    result = Py_BuildValue("iN", pid, capsule);
done:
    if (memory != NULL)
        PyMem_RawFree(memory);
    Py_XDECREF(av);
    Py_XDECREF(sv);
    Py_XDECREF(ac);
    return result;
}

PyDoc_STRVAR(outcome_doc,
"outcome(block) -> (errno, fell_back)\n\n"
"Once the process `start` returned with `block` has exited: the errno its\n"
"last exec failed with (0: it ran), and whether the shell was started in the\n"
"first program's stead.");

static PyObject *outcome(PyObject *module, PyObject *capsule) {
    char *memory = PyCapsule_GetPointer(capsule, CAPSULE);
    if (memory == NULL)
        return NULL;
    Block *b = (Block *)(memory + STACK_BYTES);
    return Py_BuildValue("iO", b->err, b->fell_back ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"start", start, METH_VARARGS, start_doc},
    {"outcome", outcome, METH_O, outcome_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_clonespawn", "Starting a process without waiting for its exec (see the source).", -1,
    methods,
};

/* Raised with every change to what `start` and `outcome` take or give: spawn.py
 * leaves a module built from another version alone (an editable install not
 * rebuilt since). */
#define API 1

PyMODINIT_FUNC PyInit__clonespawn(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "API", API) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
