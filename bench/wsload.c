/*
 * wsload: the peer benchmark's compiled load generator (bench/_cload.py
 * builds and drives it).  A WebSocket client in C on epoll and OpenSSL,
 * so that a server, not the client, is what a row measures: on a 2-CPU
 * machine the client has one CPU, and a client in Python needs about as
 * much CPU per message as the server it measures.
 *
 *   wsload echo  SHM HOST PORT TARGET ORIGIN CAFILE CONNS HEXPAYLOAD BINARY FIRST
 *   wsload churn SHM HOST PORT TARGET ORIGIN CAFILE LOOPS -          0      FIRST
 *   wsload rejoin (the same arguments as churn)
 *
 * echo:  CONNS connections (one epoll loop, non-blocking), each keeping
 *        one message in flight while running; pings are answered.
 * churn: LOOPS threads, each repeating a whole connection while running:
 *        TCP connect, full TLS handshake (no session cache, no tickets:
 *        never resumed), upgrade, close handshake (1000), TLS close_notify,
 *        the server's TCP close.
 * rejoin: churn, except that each thread offers the TLS session of its
 *        previous connection, as a browser reconnecting does (the first
 *        handshake of each thread is a full one); the server decides
 *        whether to resume it, and `resumed` counts those it did.
 *
 * Every connection comes from its own source address in 127.0.0.0/8,
 * numbered from FIRST as bench/_harness.py's Addresses numbers them, and
 * verifies the server's certificate against CAFILE (HOST as an IP
 * address).  The controller and wsload share SHM (struct shared below,
 * mirrored in _cload.py): the controller bumps `resumes` and sets
 * `running`; wsload counts, keeps `in_flight` and acknowledges each
 * resume in `acked`; an error stops the run with its text in `error`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct shared {
    uint64_t count;     /* echoes (echo) or connections (churn) completed */
    uint64_t addresses; /* source addresses used */
    uint32_t running;   /* controller: 1 to work, 0 to drain */
    uint32_t resumes;   /* controller: bumped on every resume */
    uint32_t acked;     /* wsload: the last resume it started */
    uint32_t in_flight; /* wsload: echoes or connections under way */
    uint32_t stop;      /* controller: close everything and exit */
    uint32_t failed;    /* wsload: nonzero once `error` holds a message */
    uint32_t ready;     /* wsload: connected (echo) or started (churn) */
    uint32_t resumed;   /* wsload: handshakes the server resumed (rejoin) */
    char tls[64];       /* negotiated version and cipher */
    char error[192];
};

#define LOAD(p) __atomic_load_n(&(p), __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n(&(p), (v), __ATOMIC_SEQ_CST)
#define ADD(p, v) __atomic_add_fetch(&(p), (v), __ATOMIC_SEQ_CST)

static struct shared *sh;
static SSL_CTX *ctx;
static const char *host, *target, *origin;
static int port;
static int rejoin;
static uint64_t first_address;
static unsigned char mask_key[4] = {0x37, 0xfa, 0x21, 0x3d};

static void fail(const char *fmt, ...) {
    char text[sizeof sh->error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (__atomic_exchange_n(&sh->failed, 1, __ATOMIC_SEQ_CST) == 0) {
        memcpy(sh->error, text, sizeof text);
        STORE(sh->failed, 2);
    }
    fprintf(stderr, "wsload: %s\n", text);
    exit(1);
}

static void tls_fail(const char *what, SSL *ssl, int rc) {
    int err = SSL_get_error(ssl, rc);
    unsigned long e = ERR_get_error();
    char reason[120] = "";
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    fail("%s: SSL error %d (%s%s%s)", what, err, reason,
         err == SSL_ERROR_SYSCALL ? ", errno " : "",
         err == SSL_ERROR_SYSCALL ? strerror(errno) : "");
}

/* 127.{hi+1}.{mid+1}.{lo+1}, as _harness.Addresses.next() */
static void source_address(uint64_t i, struct sockaddr_in *a) {
    uint64_t hi = i / (254 * 254), rest = i % (254 * 254);
    if (hi >= 254) fail("out of loopback source addresses");
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl((127u << 24) | ((uint32_t)(hi + 1) << 16) |
                               ((uint32_t)(rest / 254 + 1) << 8) |
                               (uint32_t)(rest % 254 + 1));
}

/* A client frame: FIN, opcode, masked payload. */
static size_t build_frame(unsigned char *out, int opcode, const unsigned char *p,
                          size_t n) {
    size_t h = 0;
    out[h++] = 0x80 | opcode;
    if (n < 126) {
        out[h++] = 0x80 | n;
    } else if (n < 65536) {
        out[h++] = 0x80 | 126;
        out[h++] = n >> 8;
        out[h++] = n & 0xff;
    } else {
        out[h++] = 0x80 | 127;
        for (int s = 56; s >= 0; s -= 8) out[h++] = (n >> s) & 0xff;
    }
    memcpy(out + h, mask_key, 4);
    h += 4;
    for (size_t i = 0; i < n; i++) out[h + i] = p[i] ^ mask_key[i & 3];
    return h + n;
}

static void set_timeouts(int fd, int seconds) {
    struct timeval tv = {seconds, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Blocking: TCP from the next source address, TLS, upgrade.  Bytes read
 * past the response head are left in buf (*len). */
static SSL *open_ws(int *fdp, unsigned char *buf, size_t cap, size_t *len) {
    struct sockaddr_in src, dst;
    source_address(first_address + ADD(sh->addresses, 1) - 1, &src);
    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_port = htons(port);
    if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) fail("bad host %s", host);
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0) fail("socket: %s", strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    set_timeouts(fd, 10);
    if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0)
        fail("bind: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0)
        fail("connect: %s", strerror(errno));
    static __thread SSL_SESSION *last;
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (rejoin && last && SSL_set_session(ssl, last) != 1) fail("SSL_set_session");
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    int rc = SSL_connect(ssl);
    if (rc != 1) tls_fail("TLS handshake", ssl, rc);
    unsigned char key[16];
    char key64[32], req[4096];
    RAND_bytes(key, sizeof key);
    EVP_EncodeBlock((unsigned char *)key64, key, sizeof key);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\nOrigin: %s\r\n\r\n",
                     target, host, port, key64, origin);
    if (n <= 0 || (size_t)n >= sizeof req) fail("request head too long");
    if ((rc = SSL_write(ssl, req, n)) != n) tls_fail("upgrade request", ssl, rc);
    *len = 0;
    for (;;) {
        rc = SSL_read(ssl, buf + *len, cap - *len);
        if (rc <= 0) tls_fail("upgrade response", ssl, rc);
        *len += rc;
        unsigned char *end = memmem(buf, *len, "\r\n\r\n", 4);
        if (end) {
            if (*len < 12 || memcmp(buf + 8, " 101", 4) != 0) {
                char *eol = memchr(buf, '\r', *len);
                fail("upgrade refused: %.*s", eol ? (int)(eol - (char *)buf) : 40, buf);
            }
            size_t head = end + 4 - buf;
            memmove(buf, buf + head, *len - head);
            *len -= head;
            break;
        }
        if (*len == cap) fail("upgrade response head too long");
    }
    if (!sh->tls[0])
        snprintf(sh->tls, sizeof sh->tls, "%s %s", SSL_get_version(ssl),
                 SSL_get_cipher_name(ssl));
    if (rejoin) {
        /* Under TLS 1.3 the server's tickets came before its 101. */
        if (SSL_session_reused(ssl)) ADD(sh->resumed, 1);
        SSL_SESSION *next = SSL_get1_session(ssl);
        if (last) SSL_SESSION_free(last);
        last = next;
    }
    *fdp = fd;
    return ssl;
}

/* Parse one server frame at buf[0..len): its opcode, FIN, payload offset
 * and length, or 0 when it is not all there yet. */
static size_t frame_at(const unsigned char *buf, size_t len, int *op, int *fin,
                       size_t *off, uint64_t *n) {
    if (len < 2) return 0;
    if (buf[1] & 0x80) fail("masked frame from the server");
    *op = buf[0] & 0x0f;
    *fin = buf[0] >> 7;
    uint64_t m = buf[1] & 0x7f;
    size_t h = 2;
    if (m == 126) {
        if (len < 4) return 0;
        m = ((uint64_t)buf[2] << 8) | buf[3];
        h = 4;
    } else if (m == 127) {
        if (len < 10) return 0;
        m = 0;
        for (int i = 2; i < 10; i++) m = (m << 8) | buf[i];
        h = 10;
    }
    if (len < h + m) return 0;
    *off = h;
    *n = m;
    return h + m;
}

static void send_all(SSL *ssl, const unsigned char *p, size_t n) {
    for (;;) {
        int rc = SSL_write(ssl, p, n);
        if (rc == (int)n) return;
        int err = SSL_get_error(ssl, rc);
        if (err != SSL_ERROR_WANT_WRITE && err != SSL_ERROR_WANT_READ)
            tls_fail("send", ssl, rc);
        struct pollfd pfd = {SSL_get_fd(ssl), err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, 0};
        if (poll(&pfd, 1, 10000) <= 0) fail("send: the server stopped reading");
    }
}

/* -- echo ------------------------------------------------------------------ */

#define RBUF (1 << 21)

struct conn {
    int fd;
    SSL *ssl;
    size_t len;
    uint64_t received;
    unsigned char *buf;
};

static unsigned char *frame;
static size_t frame_len, payload_size;

static void pong(struct conn *c, const unsigned char *p, size_t n) {
    unsigned char out[256];
    if (n > 125) fail("ping of %zu bytes", n);
    send_all(c->ssl, out, build_frame(out, 0xA, p, n));
}

static int echo_readable(struct conn *c) {
    int done = 0;
    for (;;) {
        if (c->len == RBUF) fail("server frame over %d bytes", RBUF);
        errno = 0;
        int rc = SSL_read(c->ssl, c->buf + c->len, RBUF - c->len);
        if (rc <= 0) {
            int err = SSL_get_error(c->ssl, rc);
            if (err == SSL_ERROR_WANT_READ) break;
            if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && !errno))
                fail("disconnected by the server");
            tls_fail("receive", c->ssl, rc);
        }
        c->len += rc;
        size_t at = 0, off, used;
        int op, fin;
        uint64_t n;
        while ((used = frame_at(c->buf + at, c->len - at, &op, &fin, &off, &n))) {
            const unsigned char *p = c->buf + at + off;
            at += used;
            if (op == 1 || op == 2 || op == 0) {
                c->received += n;
                if (!fin) continue;
                if (c->received != payload_size)
                    fail("echo of %llu bytes", (unsigned long long)c->received);
                c->received = 0;
                done++;
            } else if (op == 9) {
                pong(c, p, n);
            } else if (op == 8) {
                fail("closed by the server: %d", n >= 2 ? (p[0] << 8) | p[1] : 1005);
            }
        }
        memmove(c->buf, c->buf + at, c->len - at);
        c->len -= at;
    }
    return done;
}

static int echo(int conns) {
    struct conn *cs = calloc(conns, sizeof *cs);
    int ep = epoll_create1(0);
    for (int i = 0; i < conns; i++) {
        cs[i].buf = malloc(RBUF);
        cs[i].ssl = open_ws(&cs[i].fd, cs[i].buf, RBUF, &cs[i].len);
        fcntl(cs[i].fd, F_SETFL, fcntl(cs[i].fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    STORE(sh->ready, 1);
    uint32_t seen = LOAD(sh->acked);
    struct epoll_event evs[256];
    while (!LOAD(sh->stop)) {
        uint32_t resumes = LOAD(sh->resumes);
        if (resumes != seen && LOAD(sh->in_flight) == 0 && LOAD(sh->running)) {
            seen = resumes;
            STORE(sh->in_flight, conns);
            STORE(sh->acked, seen);
            for (int i = 0; i < conns; i++) send_all(cs[i].ssl, frame, frame_len);
        }
        int n = epoll_wait(ep, evs, 256, 1);
        if (n < 0 && errno != EINTR) fail("epoll_wait: %s", strerror(errno));
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            int done = echo_readable(c);
            if (!done) continue;
            if (done > 1) fail("%d echoes for one message", done);
            ADD(sh->count, 1);
            if (LOAD(sh->running) && LOAD(sh->resumes) == seen)
                send_all(c->ssl, frame, frame_len);
            else
                ADD(sh->in_flight, -1);
        }
    }
    for (int i = 0; i < conns; i++) {
        unsigned char out[16], code[2] = {0x03, 0xe8};
        send_all(cs[i].ssl, out, build_frame(out, 8, code, 2));
        close(cs[i].fd);
    }
    return 0;
}

/* -- churn ----------------------------------------------------------------- */

static void one_connection(void) {
    static __thread unsigned char buf[65536];
    size_t len;
    int fd;
    SSL *ssl = open_ws(&fd, buf, sizeof buf, &len);
    unsigned char out[16], code[2] = {0x03, 0xe8};
    send_all(ssl, out, build_frame(out, 8, code, 2));
    int closed = 0;
    for (;;) {
        size_t at = 0, off, used;
        int op, fin;
        uint64_t n;
        while ((used = frame_at(buf + at, len - at, &op, &fin, &off, &n))) {
            if (op == 8 && !closed) {
                int c = n >= 2 ? (buf[at + off] << 8) | buf[at + off + 1] : 1005;
                if (c != 1000) fail("close answered with %d", c);
                closed = 1;
                SSL_shutdown(ssl); /* close_notify, as a browser's TLS does */
            }
            at += used;
        }
        memmove(buf, buf + at, len - at);
        len -= at;
        if (len == sizeof buf) fail("server frame too long");
        errno = 0;
        int rc = SSL_read(ssl, buf + len, sizeof buf - len);
        if (rc <= 0) {
            int err = SSL_get_error(ssl, rc);
            if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && !errno)) break;
            tls_fail(closed ? "waiting for the TCP close" : "close handshake", ssl, rc);
        }
        len += rc;
    }
    if (!closed) fail("disconnected before the close handshake");
    SSL_free(ssl);
    close(fd);
}

static void *churn_loop(void *arg) {
    (void)arg;
    while (!LOAD(sh->stop)) {
        ADD(sh->in_flight, 1);
        if (!LOAD(sh->running)) {
            ADD(sh->in_flight, -1);
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
            continue;
        }
        STORE(sh->acked, LOAD(sh->resumes));
        one_connection();
        ADD(sh->count, 1);
        ADD(sh->in_flight, -1);
    }
    return NULL;
}

static int churn(int loops) {
    pthread_t *t = calloc(loops, sizeof *t);
    for (int i = 0; i < loops; i++)
        if (pthread_create(&t[i], NULL, churn_loop, NULL)) fail("pthread_create");
    STORE(sh->ready, 1);
    for (int i = 0; i < loops; i++) pthread_join(t[i], NULL);
    return 0;
}

static int unhex(int c) {
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

int main(int argc, char **argv) {
    if (argc != 12) {
        fprintf(stderr, "usage: wsload echo|churn|rejoin SHM HOST PORT TARGET ORIGIN "
                        "CAFILE N HEXPAYLOAD BINARY FIRST\n");
        return 2;
    }
    int fd = open(argv[2], O_RDWR);
    if (fd < 0) { perror(argv[2]); return 2; }
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (sh == MAP_FAILED) { perror("mmap"); return 2; }
    host = argv[3];
    port = atoi(argv[4]);
    target = argv[5];
    origin = argv[6];
    int n = atoi(argv[8]);
    first_address = strtoull(argv[11], NULL, 10);
    rejoin = strcmp(argv[1], "rejoin") == 0;
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (!rejoin) SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_read_ahead(ctx, 1); /* a read syscall per socket read, not per record part */
    if (SSL_CTX_load_verify_locations(ctx, argv[7], NULL) != 1)
        fail("cannot load the CA file %s", argv[7]);
    if (strcmp(argv[1], "churn") == 0 || rejoin) return churn(n);
    if (strcmp(argv[1], "echo") != 0) fail("unknown mode %s", argv[1]);
    size_t hex = strlen(argv[9]);
    unsigned char *payload = malloc(hex / 2 + 1);
    payload_size = hex / 2;
    for (size_t i = 0; i < payload_size; i++)
        payload[i] = unhex(argv[9][2 * i]) << 4 | unhex(argv[9][2 * i + 1]);
    frame = malloc(payload_size + 14);
    frame_len = build_frame(frame, argv[10][0] == '1' ? 2 : 1, payload, payload_size);
    return echo(n);
}
