/* The per-packet probe's sender (bench/per_packet.py builds it with cc).
 *
 *     send_probe BLOCK ROTATIONS LABEL,NETNS,ADDR,PORT ...
 *
 * Opens one connected UDP socket per destination, each in its own network namespace (a
 * socket stays in the namespace it was made in), then sends BLOCK 64-byte datagrams through
 * each socket in turn, ROTATIONS times round, and prints as JSON each destination's CPU
 * nanoseconds per send in every rotation. Turn by turn a few milliseconds apart, so that the
 * machine's slow swings (another guest, the other core's load) fall on every variant alike.
 *
 * In C so that nearly all of the time is the kernel's (the loop's own is a few nanoseconds
 * a send), on one CPU, timed by the thread's CPU clock: the scheduler's exact runtime, where
 * getrusage's system time is sampled at the tick (250 Hz here). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct target {
    char label[64];
    int fd;
    double *ns;
};

static long long thread_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int connected_in(const char *netns, const char *addr, int port)
{
    char path[256];
    snprintf(path, sizeof path, "/run/netns/%s", netns);
    int ns = open(path, O_RDONLY | O_CLOEXEC);
    if (ns < 0 || setns(ns, CLONE_NEWNET) != 0)
        return -1;
    close(ns);
    struct sockaddr_in6 six = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    struct sockaddr_in four = {.sin_family = AF_INET, .sin_port = htons(port)};
    int v6 = strchr(addr, ':') != NULL;
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || (v6 ? inet_pton(AF_INET6, addr, &six.sin6_addr) : inet_pton(AF_INET, addr, &four.sin_addr)) != 1)
        return -1;
    if (v6 ? connect(fd, (struct sockaddr *)&six, sizeof six) : connect(fd, (struct sockaddr *)&four, sizeof four))
        return -1;
    return fd;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: send_probe BLOCK ROTATIONS LABEL,NETNS,ADDR,PORT ...\n");
        return 2;
    }
    long block = atol(argv[1]);
    int rotations = atoi(argv[2]), count = argc - 3;
    struct target *targets = calloc(count, sizeof *targets);
    char data[64];
    memset(data, 'x', sizeof data);

    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sysconf(_SC_NPROCESSORS_ONLN) - 1, &one);
    sched_setaffinity(0, sizeof one, &one);

    for (int i = 0; i < count; i++) {
        char netns[128], addr[64];
        int port;
        if (sscanf(argv[i + 3], "%63[^,],%127[^,],%63[^,],%d", targets[i].label, netns, addr, &port) != 4) {
            fprintf(stderr, "send_probe: not LABEL,NETNS,ADDR,PORT: %s\n", argv[i + 3]);
            return 2;
        }
        targets[i].fd = connected_in(netns, addr, port);
        targets[i].ns = calloc(rotations, sizeof(double));
        if (targets[i].fd < 0) {
            perror(argv[i + 3]);
            return 1;
        }
        for (int k = 0; k < 1000; k++) /* warm: the flow's conntrack entry */
            send(targets[i].fd, data, sizeof data, 0);
    }
    for (int r = 0; r < rotations; r++)
        for (int i = 0; i < count; i++) {
            long long before = thread_ns();
            for (long k = 0; k < block; k++)
                send(targets[i].fd, data, sizeof data, 0); /* refused or dropped: the same path */
            targets[i].ns[r] = (double)(thread_ns() - before) / block;
        }
    printf("{");
    for (int i = 0; i < count; i++) {
        printf("%s\"%s\": [", i ? ", " : "", targets[i].label);
        for (int r = 0; r < rotations; r++)
            printf("%s%.1f", r ? ", " : "", targets[i].ns[r]);
        printf("]");
    }
    printf("}\n");
    return 0;
}
