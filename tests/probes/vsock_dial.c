/*
 * vsock_dial: run inside a container of an ember microVM by the hw_kvm test
 * `container_cannot_reach_the_agent` (tests/tests/ember_shim.rs). It tries to connect to
 * the agent's ttrpc and stdio ports (read from `ember.agent_port=` in /proc/cmdline, else
 * 1024 and 1025) at the guest's own context ids (VMADDR_CID_LOCAL, 3) and, when one
 * connects, sends a stream header for a guessed stream id and reads the answer. One line per
 * try: "cid C port P: connected, wrote W, read R, answer N" or "cid C port P: refused: <errno
 * text>". A connection the agent closes at once (it takes the host's CID only) reads 0.
 *
 * A C program because it must run in a busybox container with no libc of its own: built
 * with `cc -static` by the test. (No Rust target for static binaries is installed here,
 * and busybox has no vsock client.)
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static void on_alarm(int sig) { (void)sig; }

static unsigned agent_port(void) {
    char buf[4096];
    FILE *f = fopen("/proc/cmdline", "r");
    if (!f) return 1024;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strstr(buf, "ember.agent_port=");
    return p ? (unsigned)strtoul(p + strlen("ember.agent_port="), NULL, 10) : 1024;
}

static void dial(unsigned cid, unsigned port) {
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) {
        printf("cid %u port %u: refused: socket: %s\n", cid, port, strerror(errno));
        return;
    }
    struct sockaddr_vm addr = {0};
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = cid;
    addr.svm_port = port;
    alarm(5);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        alarm(0);
        printf("cid %u port %u: refused: %s\n", cid, port, strerror(errno));
        close(fd);
        return;
    }
    /* A stream header (magic, version 1, id) for a guessed id, as the runtime sends. */
    const char *id = "guess.init.stdout";
    unsigned char hdr[64] = {'E', 'M', 'I', 'O', 1, (unsigned char)strlen(id)};
    memcpy(hdr + 6, id, strlen(id));
    /* MSG_NOSIGNAL: a peer that closed at once must not kill the probe with SIGPIPE. */
    ssize_t w = send(fd, hdr, 6 + strlen(id), MSG_NOSIGNAL);
    unsigned char answer = 0xff;
    ssize_t r = read(fd, &answer, 1);
    alarm(0);
    printf("cid %u port %u: connected, wrote %zd, read %zd, answer %d\n", cid, port, w, r,
           r == 1 ? answer : -1);
    close(fd);
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_alarm; /* no SA_RESTART: a stuck connect or read fails with EINTR */
    sigaction(SIGALRM, &sa, NULL);
    unsigned port = agent_port();
    unsigned cids[] = {VMADDR_CID_LOCAL, 3};
    for (unsigned i = 0; i < sizeof cids / sizeof cids[0]; i++) {
        dial(cids[i], port);
        dial(cids[i], port + 1);
    }
    return 0;
}
