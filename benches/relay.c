/*
 * relay: the floor cost of line fan-out on this kernel, for comparison with
 * natterd (issue 16). One thread, epoll, non-blocking sockets, an output
 * buffer per connection, and every broadcast line copied into every other
 * logged-in connection's buffer, then written when the socket takes it.
 *
 * It speaks just enough of natter's protocol for natter-bench's `fanout`
 * scenario to drive it exactly as it drives natterd: the greeting,
 * `register`/`login` (no passwords, no storage), `block` (a blocker gets
 * nothing from whom it blocks), `ping`, and `broadcast <text>`, which sends
 * `* broadcast <from> <time> <text>` to the others and `+ sent to <n>` to
 * the sender. Anything else gets `- BADARG`. Not a chat server: a yardstick.
 *
 *   cc -O2 -o relay benches/relay.c && ./relay [PORT]   (0: a free port)
 *
 * Prints `listening on 127.0.0.1:<port>` like natterd, so the bench scripts
 * start either the same way.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 65536
#define MAX_LINE 8192
#define MAX_NAME 64

struct conn {
    int fd;
    int logged_in;
    int writing; /* EPOLLOUT armed */
    char name[MAX_NAME];
    char blocks[MAX_NAME]; /* the one name it blocks (the bench needs one) */
    char in[MAX_LINE];
    size_t in_len;
    char *out;
    size_t out_len, out_cap, out_pos;
};

static struct conn *conns[MAX_CONNS];
static int epfd;
static int live[MAX_CONNS];
static int nlive;
/* Connections with output queued since the last flush: written once at the
 * end of each poll pass, so several broadcasts share one write. */
static int dirty[MAX_CONNS];
static int ndirty;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void arm(struct conn *c, int writing) {
    struct epoll_event ev = {.events = EPOLLIN | (writing ? EPOLLOUT : 0), .data.fd = c->fd};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->writing = writing;
}

static void queue(struct conn *c, const char *bytes, size_t n) {
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n)
            cap *= 2;
        char *grown = realloc(c->out, cap);
        if (!grown)
            die("realloc");
        c->out = grown;
        c->out_cap = cap;
    }
    if (c->out_len == c->out_pos && !c->writing && ndirty < MAX_CONNS)
        dirty[ndirty++] = c->fd;
    memcpy(c->out + c->out_len, bytes, n);
    c->out_len += n;
}

static void close_conn(struct conn *c) {
    for (int i = 0; i < nlive; i++)
        if (live[i] == c->fd) {
            live[i] = live[--nlive];
            break;
        }
    close(c->fd);
    conns[c->fd] = NULL;
    free(c->out);
    free(c);
}

/* Writes what the socket takes; 0 if the connection failed. */
static int flush(struct conn *c) {
    while (c->out_pos < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_pos, c->out_len - c->out_pos);
        if (n > 0) {
            c->out_pos += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            if (!c->writing)
                arm(c, 1);
            return 1;
        } else {
            return 0;
        }
    }
    c->out_len = c->out_pos = 0;
    if (c->writing)
        arm(c, 0);
    return 1;
}

static void reply(struct conn *c, const char *text) { queue(c, text, strlen(text)); }

static void word(const char **p, char *dst, size_t cap) {
    while (**p == ' ')
        (*p)++;
    size_t n = 0;
    while (**p && **p != ' ' && n + 1 < cap)
        dst[n++] = *(*p)++;
    dst[n] = 0;
    while (**p == ' ')
        (*p)++;
}

static void broadcast(struct conn *from, const char *text) {
    char line[MAX_LINE + 256];
    char stamp[32];
    time_t now = time(NULL);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    int n = snprintf(line, sizeof line, "* broadcast %s %s %s\n", from->name, stamp, text);
    if (n < 0 || (size_t)n >= sizeof line)
        return;
    int sent = 0;
    for (int i = 0; i < nlive; i++) {
        struct conn *to = conns[live[i]];
        if (to == from || !to->logged_in || strcmp(to->blocks, from->name) == 0)
            continue;
        queue(to, line, (size_t)n);
        sent++;
    }
    char done[64];
    snprintf(done, sizeof done, "+ sent to %d\n", sent);
    reply(from, done);
}

static void handle(struct conn *c, const char *line) {
    char cmd[32], a[MAX_NAME];
    const char *p = line;
    word(&p, cmd, sizeof cmd);
    char out[256];
    if (strcmp(cmd, "register") == 0 || strcmp(cmd, "login") == 0) {
        word(&p, a, sizeof a);
        snprintf(c->name, sizeof c->name, "%s", a);
        c->logged_in = 1;
        snprintf(out, sizeof out,
                 cmd[0] == 'r' ? "+ registered %s\n" : "+ welcome %s (0 unread messages)\n", a);
        reply(c, out);
    } else if (strcmp(cmd, "block") == 0) {
        word(&p, a, sizeof a);
        snprintf(c->blocks, sizeof c->blocks, "%s", a);
        snprintf(out, sizeof out, "+ blocked %s\n", a);
        reply(c, out);
    } else if (strcmp(cmd, "ping") == 0) {
        reply(c, "+ pong\n");
    } else if (strcmp(cmd, "broadcast") == 0 && c->logged_in && *p) {
        broadcast(c, p);
    } else if (strcmp(cmd, "quit") == 0) {
        reply(c, "+ bye\n");
    } else {
        reply(c, "- BADARG the relay knows register, login, block, ping, broadcast\n");
    }
}

/* Reads and handles every whole line; 0 if the connection ended. */
static int readable(struct conn *c) {
    for (;;) {
        ssize_t n = read(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN;
        }
        c->in_len += (size_t)n;
        size_t start = 0;
        for (size_t i = 0; i < c->in_len; i++) {
            if (c->in[i] != '\n')
                continue;
            c->in[i] = 0;
            if (i > start && c->in[i - 1] == '\r')
                c->in[i - 1] = 0;
            handle(c, c->in + start);
            start = i + 1;
        }
        memmove(c->in, c->in + start, c->in_len - start);
        c->in_len -= start;
        if (c->in_len == sizeof c->in)
            return 0; /* a line too long for the relay */
    }
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    int port = argc > 1 ? atoi(argv[1]) : 4000;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(lfd, 1024) < 0)
        die("listen");
    socklen_t len = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &len);
    printf("listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[1024];
    for (;;) {
        int n = epoll_wait(epfd, events, 1024, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int cfd;
                while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (cfd >= MAX_CONNS) {
                        close(cfd);
                        continue;
                    }
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *c = calloc(1, sizeof *c);
                    if (!c)
                        die("calloc");
                    c->fd = cfd;
                    conns[cfd] = c;
                    live[nlive++] = cfd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, cfd, &cev);
                    reply(c, "* hello natter 1\n");
                }
                continue;
            }
            struct conn *c = conns[fd];
            if (!c)
                continue;
            int ok = 1;
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                ok = readable(c);
            if (ok && (events[i].events & EPOLLOUT))
                ok = flush(c);
            if (!ok)
                close_conn(c);
        }
        /* End of the pass: one write per connection with output. A
         * connection closed meanwhile left a NULL (or a reused fd, whose
         * flush is harmless). */
        for (int i = 0; i < ndirty; i++) {
            struct conn *c = conns[dirty[i]];
            if (c && !c->writing && !flush(c))
                close_conn(c);
        }
        ndirty = 0;
    }
}
