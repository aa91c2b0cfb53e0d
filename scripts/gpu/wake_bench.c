// What one hand-off between two threads costs on this machine: the floor under any server
// whose HTTP thread and decode thread are not the same (see docs/gpu.md, "Stop 10").
//
// One thread stamps the clock and wakes another that is blocked; the woken thread stamps the
// clock again. The difference is one wake-up. Measured for a condition variable, a
// loopback TCP socket (what a client and `llmlocal serve` do), and a spinning wait (no
// sleep at all, the lower bound), each after the woken thread has been idle for 0, 1 and
// 8 ms (8 ms: a 512-token F16 prompt pass on the H100). Idle time matters on a VM: a
// virtual CPU that has just gone idle is still polling; one that has been idle longer has
// halted and needs an interrupt to run again.
//
//   gcc -O2 -pthread -o wake-bench scripts/gpu/wake_bench.c && ./wake-bench
//
// Prints one JSON object per line: kind, idle_us, median_us, p90_us, runs.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void idle_for(int us) {
    if (us <= 0) return;
    struct timespec t = {us / 1000000, (long)(us % 1000000) * 1000};
    nanosleep(&t, NULL);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(const char *kind, int idle_us, double *lat, int n) {
    qsort(lat, n, sizeof *lat, cmp);
    printf("{\"kind\":\"%s\",\"idle_us\":%d,\"median_us\":%.1f,\"p90_us\":%.1f,\"runs\":%d}\n",
           kind, idle_us, lat[n / 2], lat[n * 9 / 10], n);
    fflush(stdout);
}

// Shared by the waker and the woken thread: the stamp and the turn.
struct pingpong {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    atomic_int turn;  // 0: the waker's, 1: the woken thread's, 2: stop
    double sent, woke;
    int spin;
};

static void *woken(void *arg) {
    struct pingpong *p = arg;
    for (;;) {
        if (p->spin) {
            while (atomic_load(&p->turn) == 0) {
            }
        } else {
            pthread_mutex_lock(&p->lock);
            while (atomic_load(&p->turn) == 0) pthread_cond_wait(&p->cond, &p->lock);
            pthread_mutex_unlock(&p->lock);
        }
        if (atomic_load(&p->turn) == 2) return NULL;
        p->woke = now_us();
        atomic_store(&p->turn, 0);
    }
}

static void threads(int spin, int idle_us, int n) {
    struct pingpong p = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, spin};
    pthread_t t;
    pthread_create(&t, NULL, woken, &p);
    double *lat = calloc(n, sizeof *lat);
    for (int i = 0; i < n; i++) {
        idle_for(idle_us);
        pthread_mutex_lock(&p.lock);
        p.sent = now_us();
        atomic_store(&p.turn, 1);
        pthread_cond_signal(&p.cond);
        pthread_mutex_unlock(&p.lock);
        while (atomic_load(&p.turn) == 1) {
        }
        lat[i] = p.woke - p.sent;
    }
    pthread_mutex_lock(&p.lock);
    atomic_store(&p.turn, 2);
    pthread_cond_signal(&p.cond);
    pthread_mutex_unlock(&p.lock);
    pthread_join(t, NULL);
    report(spin ? "spin" : "condvar", idle_us, lat, n);
    free(lat);
}

struct tcp_end {
    int fd;
    double woke;
};

static void *tcp_echo(void *arg) {
    struct tcp_end *e = arg;
    char c;
    while (recv(e->fd, &c, 1, 0) == 1) {
        e->woke = now_us();
        if (send(e->fd, &c, 1, 0) != 1) break;
    }
    return NULL;
}

static void tcp(int idle_us, int n) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 1) ||
        getsockname(lfd, (struct sockaddr *)&a, &len)) {
        perror("loopback listen");
        exit(1);
    }
    int cfd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(cfd, (struct sockaddr *)&a, sizeof a)) {
        perror("loopback connect");
        exit(1);
    }
    struct tcp_end e = {accept(lfd, NULL, NULL), 0};
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(e.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pthread_t t;
    pthread_create(&t, NULL, tcp_echo, &e);
    double *lat = calloc(n, sizeof *lat), *rtt = calloc(n, sizeof *rtt);
    char c = 'x';
    for (int i = 0; i < n; i++) {
        idle_for(idle_us);
        double sent = now_us();
        if (send(cfd, &c, 1, 0) != 1 || recv(cfd, &c, 1, 0) != 1) {
            perror("loopback ping");
            exit(1);
        }
        rtt[i] = now_us() - sent;
        lat[i] = e.woke - sent;
    }
    close(cfd);
    pthread_join(t, NULL);
    close(e.fd);
    close(lfd);
    report("tcp_one_way", idle_us, lat, n);
    report("tcp_round_trip", idle_us, rtt, n);
    free(lat);
    free(rtt);
}

int main(void) {
    const int idle[] = {0, 1000, 8000};
    for (int i = 0; i < 3; i++) {
        int n = idle[i] >= 8000 ? 400 : 2000;
        threads(0, idle[i], n);
        threads(1, idle[i], n);
        tcp(idle[i], n);
    }
    return 0;
}
