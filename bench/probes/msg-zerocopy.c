// bench/msg-zerocopy.sh builds and runs this probe (docs/migration.md, step 4, says what it measured).
// MSG_ZEROCOPY vs plain send over loopback TCP: 1 GiB in 1 MiB sends, receiver reads 1 MiB at a time.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>
#include <errno.h>
#include <time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <linux/errqueue.h>
#include <poll.h>
#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif
#define CHUNK (1 << 20)
#define TOTAL (1L << 30)
#define BUFS 32
static int port;
static void *receiver(void *arg) {
    int l = *(int *)arg;
    int s = accept(l, NULL, NULL);
    char *buf = malloc(CHUNK);
    long got = 0;
    while (got < TOTAL) { ssize_t n = read(s, buf, CHUNK); if (n <= 0) break; got += n; }
    close(s);
    return (void *)got;
}
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static long completions(int s, int block) {
    long done = 0;
    for (;;) {
        if (block) { struct pollfd p = { s, 0, 0 }; poll(&p, 1, 1000); }
        char control[128]; struct msghdr m = {0}; m.msg_control = control; m.msg_controllen = sizeof control;
        if (recvmsg(s, &m, MSG_ERRQUEUE | (block ? 0 : MSG_DONTWAIT)) < 0) return done;
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        struct sock_extended_err *e = (struct sock_extended_err *)CMSG_DATA(c);
        done += e->ee_data - e->ee_info + 1;
        if (e->ee_code & SO_EE_CODE_ZEROCOPY_COPIED) done += 1000000000L; // mark: kernel copied
        block = 0;
    }
}
int main(int argc, char **argv) {
    int zc = argc > 1 && strcmp(argv[1], "zc") == 0;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    bind(l, (void *)&a, sizeof a); listen(l, 1);
    socklen_t al = sizeof a; getsockname(l, (void *)&a, &al);
    pthread_t t; pthread_create(&t, NULL, receiver, &l);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    connect(s, (void *)&a, sizeof a);
    int one = 1;
    if (zc && setsockopt(s, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof one)) { perror("SO_ZEROCOPY"); return 1; }
    char *bufs = aligned_alloc(4096, (size_t)BUFS * CHUNK);
    for (long i = 0; i < (long)BUFS * CHUNK; i++) bufs[i] = (char)(i * 7 + 3);
    double start = now();
    long sent = 0, calls = 0, outstanding = 0, copied = 0;
    while (sent < TOTAL) {
        char *b = bufs + (calls % BUFS) * CHUNK;
        if (zc) while (outstanding >= BUFS) { long c = completions(s, 1); copied += c / 1000000000L; outstanding -= c % 1000000000L; }
        ssize_t n = send(s, b, CHUNK, zc ? MSG_ZEROCOPY : 0);
        if (n < 0) { if (errno == ENOBUFS) { long c = completions(s, 1); copied += c / 1000000000L; outstanding -= c % 1000000000L; continue; } perror("send"); return 1; }
        sent += n; calls++; if (zc) outstanding++;
        if (zc) { long c = completions(s, 0); copied += c / 1000000000L; outstanding -= c % 1000000000L; }
    }
    while (zc && outstanding > 0) { long c = completions(s, 1); if (c == 0) break; copied += c / 1000000000L; outstanding -= c % 1000000000L; }
    shutdown(s, SHUT_WR);
    void *got; pthread_join(t, &got);
    double el = now() - start;
    printf("%-5s %6.0f ms  %.2f GiB/s  (%ld MiB received; completions reporting a kernel copy: %ld)\n", zc ? "zc" : "plain", el * 1000, TOTAL / el / (1 << 30), (long)got >> 20, copied);
    return 0;
}
