// A memcached load generator: one thread, epoll, many connections, each
// keeping a fixed number of requests in flight (pipelining), over a fixed
// key space with uniform or zipfian keys. It measures the server, not
// itself: no allocation, no formatting on the hot path beyond the request
// text, and replies parsed in place.
//
//   loadgen -s HOST:PORT [-c CONNS] [-d DEPTH] [-k KEYS] [-v BYTES]
//           [-r GET_PERCENT] [-z THETA] [-p get|mg] [-t SECONDS | -n OPS]
//           [--populate]
//
// Prints one line: ops/s, then latency percentiles (from a request's send
// to its reply) in microseconds, and the hit ratio of reads.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
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

#define MAX_DEPTH 256
#define BUF (1 << 20)

typedef struct {
  int fd;
  int inflight;
  uint64_t sent_at[MAX_DEPTH];  // ring of send times, oldest at head
  int head;
  char *out;
  size_t out_len, out_off;
  char *in;
  size_t in_len;
} conn_t;

static int conns = 50, depth = 1, get_percent = 90, populate = 0, use_mg = 0;
static long keys = 100000, value_size = 32, max_ops = 0;
static double seconds = 5, theta = 0;
static char *value;
static double *zipf_cdf;
static uint64_t rng_state = 88172645463325252ull;
static uint64_t *latencies;
static long lat_count, lat_cap, hits, reads, done_ops, issued;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t next_random(void) {  // xorshift64
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static long next_key(void) {
  if (populate) return issued % keys;
  if (theta <= 0) return (long)(next_random() % (uint64_t)keys);
  double u = (double)(next_random() >> 11) / 9007199254740992.0;
  long lo = 0, hi = keys - 1;
  while (lo < hi) {  // first rank whose cumulative probability reaches u
    long mid = (lo + hi) / 2;
    if (zipf_cdf[mid] < u) lo = mid + 1; else hi = mid;
  }
  return lo;
}

static void build_zipf(void) {
  zipf_cdf = malloc(sizeof(double) * (size_t)keys);
  double sum = 0;
  for (long i = 0; i < keys; i++) sum += 1.0 / pow((double)(i + 1), theta);
  double acc = 0;
  for (long i = 0; i < keys; i++) {
    acc += 1.0 / pow((double)(i + 1), theta) / sum;
    zipf_cdf[i] = acc;
  }
}

static void enqueue(conn_t *c) {
  long key = next_key();
  int is_get = !populate && (long)(next_random() % 100) < get_percent;
  char *p = c->out + c->out_len;
  if (is_get) {
    p += use_mg ? sprintf(p, "mg key:%ld v\r\n", key) : sprintf(p, "get key:%ld\r\n", key);
  } else {
    p += sprintf(p, "set key:%ld 0 0 %ld\r\n", key, value_size);
    memcpy(p, value, (size_t)value_size);
    p += value_size;
    *p++ = '\r';
    *p++ = '\n';
  }
  c->out_len = (size_t)(p - c->out);
  c->sent_at[(c->head + c->inflight) % MAX_DEPTH] = now_ns();
  c->inflight++;
  issued++;
}

static void complete(conn_t *c, int is_read, int hit) {
  uint64_t t = now_ns() - c->sent_at[c->head];
  c->head = (c->head + 1) % MAX_DEPTH;
  c->inflight--;
  done_ops++;
  if (is_read) {
    reads++;
    hits += hit;
  }
  if (lat_count < lat_cap) latencies[lat_count++] = t;
}

// Consumes complete replies at the start of c->in; returns -1 on a reply
// it does not understand.
static int parse(conn_t *c) {
  size_t off = 0;
  for (;;) {
    char *start = c->in + off;
    size_t avail = c->in_len - off;
    char *eol = memmem(start, avail, "\r\n", 2);
    if (!eol) break;
    size_t line = (size_t)(eol - start) + 2;
    if (avail >= 5 && memcmp(start, "VALUE", 5) == 0) {
      long n = atol(strrchr(start, ' ') + 1);  // "VALUE key flags bytes"
      size_t need = line + (size_t)n + 2 + 5;  // data, CRLF, "END\r\n"
      if (avail < need) break;
      complete(c, 1, 1);
      off += need;
    } else if (avail >= 2 && memcmp(start, "VA", 2) == 0) {
      long n = atol(start + 3);
      size_t need = line + (size_t)n + 2;
      if (avail < need) break;
      complete(c, 1, 1);
      off += need;
    } else if (memcmp(start, "END", 3) == 0 || memcmp(start, "EN\r", 3) == 0) {
      complete(c, 1, 0);
      off += line;
    } else if (memcmp(start, "STORED", 6) == 0) {
      complete(c, 0, 0);
      off += line;
    } else {
      fprintf(stderr, "loadgen: unexpected reply: %.*s\n", (int)line, start);
      return -1;
    }
  }
  memmove(c->in, c->in + off, c->in_len - off);
  c->in_len -= off;
  return 0;
}

static int connect_to(const char *host, const char *port) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
  if (getaddrinfo(host, port, &hints, &res) != 0) return -1;
  int fd = socket(res->ai_family, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
    freeaddrinfo(res);
    return -1;
  }
  freeaddrinfo(res);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  fcntl(fd, F_SETFL, O_NONBLOCK);
  return fd;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  char *server = "127.0.0.1:11211";
  for (int i = 1; i < argc; i++) {
    char *a = argv[i];
    char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--populate")) { populate = 1; continue; }
    if (!v) { fprintf(stderr, "loadgen: %s needs a value\n", a); return 2; }
    i++;
    if (!strcmp(a, "-s")) server = v;
    else if (!strcmp(a, "-c")) conns = atoi(v);
    else if (!strcmp(a, "-d")) depth = atoi(v);
    else if (!strcmp(a, "-k")) keys = atol(v);
    else if (!strcmp(a, "-v")) value_size = atol(v);
    else if (!strcmp(a, "-r")) get_percent = atoi(v);
    else if (!strcmp(a, "-z")) theta = atof(v);
    else if (!strcmp(a, "-t")) seconds = atof(v);
    else if (!strcmp(a, "-n")) max_ops = atol(v);
    else if (!strcmp(a, "-p")) use_mg = !strcmp(v, "mg");
    else { fprintf(stderr, "loadgen: unknown option %s\n", a); return 2; }
  }
  if (conns < 1 || depth < 1 || depth > MAX_DEPTH || keys < 1 || value_size < 1 ||
      value_size > BUF / 4) {
    fprintf(stderr, "loadgen: bad -c, -d (1..%d), -k or -v\n", MAX_DEPTH);
    return 2;
  }
  if (populate) max_ops = keys;
  char host[256];
  char *colon = strrchr(server, ':');
  if (!colon || (size_t)(colon - server) >= sizeof(host)) { fprintf(stderr, "loadgen: -s HOST:PORT\n"); return 2; }
  memcpy(host, server, (size_t)(colon - server));
  host[colon - server] = 0;
  value = malloc((size_t)value_size);
  for (long i = 0; i < value_size; i++) value[i] = (char)('a' + i % 26);
  if (theta > 0) build_zipf();
  lat_cap = 20000000;
  latencies = malloc(sizeof(uint64_t) * (size_t)lat_cap);
  int ep = epoll_create1(0);
  conn_t *cs = calloc((size_t)conns, sizeof(conn_t));
  for (int i = 0; i < conns; i++) {
    cs[i].fd = connect_to(host, colon + 1);
    if (cs[i].fd < 0) { fprintf(stderr, "loadgen: cannot connect to %s: %s\n", server, strerror(errno)); return 1; }
    cs[i].out = malloc(BUF);
    cs[i].in = malloc(BUF);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = &cs[i]};
    epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
  }
  uint64_t start = now_ns(), deadline = start + (uint64_t)(seconds * 1e9);
  struct epoll_event events[1024];
  for (;;) {
    if (max_ops ? done_ops >= max_ops : now_ns() >= deadline) break;
    for (int i = 0; i < conns; i++) {
      conn_t *c = &cs[i];
      while (c->inflight < depth && (!max_ops || issued < max_ops) &&
             c->out_len + (size_t)value_size + 128 < BUF)
        enqueue(c);
      if (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w > 0) c->out_off += (size_t)w;
        if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
      }
    }
    int n = epoll_wait(ep, events, 1024, 100);
    for (int i = 0; i < n; i++) {
      conn_t *c = events[i].data.ptr;
      if (!(events[i].events & EPOLLIN)) continue;
      ssize_t r = read(c->fd, c->in + c->in_len, BUF - c->in_len);
      if (r == 0) { fprintf(stderr, "loadgen: the server closed a connection\n"); return 1; }
      if (r < 0) continue;
      c->in_len += (size_t)r;
      if (parse(c) != 0) return 1;
    }
  }
  double elapsed = (double)(now_ns() - start) / 1e9;
  qsort(latencies, (size_t)lat_count, sizeof(uint64_t), cmp_u64);
#define PCT(p) (lat_count ? (double)latencies[(size_t)((double)(lat_count - 1) * (p))] / 1000.0 : 0)
  printf("ops/s %.0f ops %ld seconds %.3f p50_us %.1f p99_us %.1f p999_us %.1f max_us %.1f hit %.3f\n",
         (double)done_ops / elapsed, done_ops, elapsed, PCT(0.50), PCT(0.99), PCT(0.999), PCT(1.0),
         reads ? (double)hits / (double)reads : 0.0);
  return 0;
}
