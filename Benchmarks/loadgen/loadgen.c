/*
 * loadgen: a memcached-protocol load generator that is not the bottleneck.
 *
 * One thread, epoll, C connections, each keeping D requests in flight
 * (pipelining depth D; D = 1 is request/response). A fixed key space of K
 * keys, chosen uniformly or zipfian (-z THETA), GET/SET mixed by -r (percent
 * of gets), values of -v bytes, gets sent as `get KEY` or meta `mg KEY v`.
 * The key space is filled with sets first (untimed), then -n requests are
 * timed. Prints one line of key=value figures: ops/s, hits, misses, errors
 * and latency percentiles in microseconds (from a request's send to its
 * reply, so with pipelining they include the queueing of the depth).
 *
 * Exits 3 if the server answers ERROR to a request it does not know (e.g.
 * `mg` on a server without the meta protocol), 1 on any other failure.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct options {
    const char *host;
    int port, conns, depth, get_percent, value_size, meta;
    long ops, keys;
    double zipf_theta;
};

struct conn {
    int fd;
    char *out; size_t out_len, out_sent, out_cap;
    char *in; size_t in_len, in_cap;
    uint64_t *sent_at; int head, inflight; /* ring of send times, depth long */
    int *is_get;                           /* ring: what each request was */
};

static struct options opt = {"127.0.0.1", 11211, 4, 1, 90, 32, 0, 200000, 10000, 0.0};
static double *zipf_cdf;
static char *value_bytes;
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static long next_seq_key, to_send, completed, hits, misses, errors;
static uint32_t *latencies; static long latency_count;
static int timing;

static void die(const char *what) { perror(what); exit(1); }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t next_random(void) { /* xorshift64*: fast, fixed seed, reproducible */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static double unit_random(void) { return (next_random() >> 11) * (1.0 / 9007199254740992.0); }

/* The zipfian CDF over ranks 1..K, so a draw is one binary search. */
static void build_zipf(void) {
    zipf_cdf = malloc(sizeof(double) * opt.keys);
    if (!zipf_cdf) die("malloc");
    double sum = 0;
    for (long i = 0; i < opt.keys; i++) zipf_cdf[i] = (sum += 1.0 / pow((double)(i + 1), opt.zipf_theta));
    for (long i = 0; i < opt.keys; i++) zipf_cdf[i] /= sum;
}

static long pick_key(void) {
    if (!timing) return next_seq_key++;
    if (opt.zipf_theta <= 0) return (long)(next_random() % (uint64_t)opt.keys);
    double u = unit_random();
    long lo = 0, hi = opt.keys - 1;
    while (lo < hi) { long mid = (lo + hi) / 2; if (zipf_cdf[mid] < u) lo = mid + 1; else hi = mid; }
    return lo;
}

static void ensure(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    while (*cap < need) *cap *= 2;
    if (!(*buf = realloc(*buf, *cap))) die("realloc");
}

static void append(struct conn *c, const char *bytes, size_t n) {
    ensure(&c->out, &c->out_cap, c->out_len + n);
    memcpy(c->out + c->out_len, bytes, n);
    c->out_len += n;
}

static void queue_request(struct conn *c) {
    char line[128];
    long key = pick_key();
    int is_get = timing && (int)(next_random() % 100) < opt.get_percent;
    int n;
    if (is_get)
        n = snprintf(line, sizeof line, opt.meta ? "mg key:%08ld v\r\n" : "get key:%08ld\r\n", key);
    else
        n = snprintf(line, sizeof line, "set key:%08ld 0 0 %d\r\n", key, opt.value_size);
    append(c, line, n);
    if (!is_get) { append(c, value_bytes, opt.value_size); append(c, "\r\n", 2); }
    int slot = (c->head + c->inflight) % opt.depth;
    c->sent_at[slot] = now_ns();
    c->is_get[slot] = is_get;
    c->inflight++;
    to_send--;
}

static void flush_out(struct conn *c) {
    while (c->out_sent < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_sent, c->out_len - c->out_sent, MSG_NOSIGNAL);
        if (n < 0) { if (errno == EAGAIN) return; die("send"); }
        c->out_sent += n;
    }
    c->out_len = c->out_sent = 0;
}

static const char *find_crlf(const char *p, size_t n) {
    const char *q = memmem(p, n, "\r\n", 2);
    return q;
}

/* Length of one complete reply at the start of `p`, 0 if incomplete. */
static size_t reply_length(const char *p, size_t n, int *hit, int *error) {
    const char *eol = find_crlf(p, n);
    if (!eol) return 0;
    size_t line = eol - p + 2;
    *hit = 0; *error = 0;
    if (!strncmp(p, "VALUE ", 6)) {
        /* Parsed by hand, not with sscanf: glibc's sscanf takes strlen of
         * the whole (unterminated) buffer first, which made every pipelined
         * reply cost O(buffer) and the client the bottleneck. */
        const char *key_end = memchr(p + 6, ' ', line - 6);
        const char *flags_end = key_end ? memchr(key_end + 1, ' ', eol - key_end - 1) : NULL;
        if (!flags_end) { *error = 2; return line; }
        char *bytes_end;
        long bytes = strtol(flags_end + 1, &bytes_end, 10);
        if (bytes_end != eol || bytes < 0) { *error = 2; return line; }
        size_t total = line + bytes + 2 + 5; /* data, CRLF, END\r\n */
        if (n < total) return 0;
        *hit = 1;
        return total;
    }
    if (!strncmp(p, "VA ", 3)) {
        long bytes = strtol(p + 3, NULL, 10);
        size_t total = line + bytes + 2;
        if (n < total) return 0;
        *hit = 1;
        return total;
    }
    if (!strncmp(p, "END", 3) || !strncmp(p, "EN", 2) || !strncmp(p, "STORED", 6) || !strncmp(p, "HD", 2))
        return line;
    if (!strncmp(p, "ERROR", 5)) *error = 3; else *error = 2;
    return line;
}

static void complete_one(struct conn *c, int hit) {
    uint64_t took = now_ns() - c->sent_at[c->head];
    if (timing) {
        latencies[latency_count++] = (uint32_t)(took / 100); /* 0.1 us units */
        if (c->is_get[c->head]) { if (hit) hits++; else misses++; }
    }
    c->head = (c->head + 1) % opt.depth;
    c->inflight--;
    completed++;
}

static void read_replies(struct conn *c) {
    for (;;) {
        ensure(&c->in, &c->in_cap, c->in_len + 65536);
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n == 0) { fprintf(stderr, "loadgen: server closed a connection\n"); exit(1); }
        if (n < 0) { if (errno == EAGAIN) break; die("recv"); }
        c->in_len += n;
    }
    size_t at = 0;
    for (;;) {
        int hit, error;
        size_t len = reply_length(c->in + at, c->in_len - at, &hit, &error);
        if (!len) break;
        if (error == 3) { fprintf(stderr, "loadgen: server answered ERROR (%s not supported)\n", opt.meta ? "mg" : "request"); exit(3); }
        if (error) { errors++; fprintf(stderr, "loadgen: unexpected reply %.*s\n", (int)(len > 80 ? 80 : len), c->in + at); exit(1); }
        complete_one(c, hit);
        at += len;
    }
    memmove(c->in, c->in + at, c->in_len - at);
    c->in_len -= at;
}

static int connect_one(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(opt.port)};
    if (inet_pton(AF_INET, opt.host, &a.sin_addr) != 1) { fprintf(stderr, "loadgen: bad host %s\n", opt.host); exit(1); }
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) die("connect");
    return fd;
}

/* Sends `total` requests over every connection, `depth` in flight each. */
static void run_phase(struct conn *conns, int ep, long total) {
    to_send = total; completed = 0;
    for (int i = 0; i < opt.conns; i++) {
        while (conns[i].inflight < opt.depth && to_send > 0) queue_request(&conns[i]);
        flush_out(&conns[i]);
    }
    struct epoll_event events[256];
    while (completed < total) {
        int n = epoll_wait(ep, events, 256, 10000);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        if (n == 0) { fprintf(stderr, "loadgen: no reply for 10 s\n"); exit(1); }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) read_replies(c);
            while (c->inflight < opt.depth && to_send > 0) queue_request(c);
            flush_out(c);
        }
    }
}

static int compare_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double percentile(double p) {
    long i = (long)(p * (latency_count - 1));
    return latencies[i] / 10.0;
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen [-s HOST] [-p PORT] [-c CONNS] [-d DEPTH] [-n OPS] [-k KEYS]\n"
                    "               [-v VALUE_BYTES] [-r GET_PERCENT] [-z ZIPF_THETA] [-m (meta mg)]\n");
    exit(1);
}

int main(int argc, char **argv) {
    int ch;
    while ((ch = getopt(argc, argv, "s:p:c:d:n:k:v:r:z:m")) != -1) {
        switch (ch) {
        case 's': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'c': opt.conns = atoi(optarg); break;
        case 'd': opt.depth = atoi(optarg); break;
        case 'n': opt.ops = atol(optarg); break;
        case 'k': opt.keys = atol(optarg); break;
        case 'v': opt.value_size = atoi(optarg); break;
        case 'r': opt.get_percent = atoi(optarg); break;
        case 'z': opt.zipf_theta = atof(optarg); break;
        case 'm': opt.meta = 1; break;
        default: usage();
        }
    }
    if (opt.conns < 1 || opt.conns > 1024 || opt.depth < 1 || opt.depth > 4096 || opt.ops < 1 ||
        opt.keys < 1 || opt.value_size < 0 || opt.value_size > (1 << 20) || opt.get_percent < 0 ||
        opt.get_percent > 100)
        usage();
    if (opt.zipf_theta > 0) build_zipf();
    value_bytes = malloc(opt.value_size + 1);
    latencies = malloc(sizeof(uint32_t) * opt.ops);
    if (!value_bytes || !latencies) die("malloc");
    memset(value_bytes, 'x', opt.value_size);

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct conn *conns = calloc(opt.conns, sizeof *conns);
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        c->fd = connect_one();
        c->out_cap = c->in_cap = 65536;
        c->out = malloc(c->out_cap); c->in = malloc(c->in_cap);
        c->sent_at = calloc(opt.depth, sizeof *c->sent_at);
        c->is_get = calloc(opt.depth, sizeof *c->is_get);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    }
    timing = 0;
    run_phase(conns, ep, opt.keys); /* fill the key space */
    timing = 1;
    uint64_t began = now_ns();
    run_phase(conns, ep, opt.ops);
    double seconds = (now_ns() - began) / 1e9;
    qsort(latencies, latency_count, sizeof *latencies, compare_u32);
    printf("ops=%ld seconds=%.3f ops_per_s=%.0f hits=%ld misses=%ld errors=%ld "
           "p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f\n",
           opt.ops, seconds, opt.ops / seconds, hits, misses, errors, percentile(0.5), percentile(0.9),
           percentile(0.99), percentile(0.999), latencies[latency_count - 1] / 10.0);
    return 0;
}
