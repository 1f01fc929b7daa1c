/*
 * snap-app: the workload the snapshot tests run as a sandbox's init. It holds
 * state that a checkpoint must carry over and answers questions about it:
 *   - MB MiB of patterned memory, checked against a checksum on request;
 *   - a counter that ticks every 100 ms (time inside the sandbox goes on);
 *   - a TCP listener on :7000 (control) and :7001 (peer), and two forked
 *     peer processes holding ESTABLISHED connections to :7001 that
 *     ping-pong: one over loopback, one over the sandbox's eth0 address;
 *   - /data/marker, a file written once at start.
 * Control (one line per connection on :7000): "state" answers
 *   "counter=N mem=OK|BAD peer_port=P pongs=N peer=up|down marker=TEXT
 *    eth_port=P eth_pongs=N eth=up|down" (eth_* for the eth0 peer);
 *   "say TEXT" writes TEXT to stdout (the runtime's init.log) and answers
 *   "said".
 *
 *   snap-app MB MARKER [nopeer]
 * Statically linked so that it runs in a bare busybox root.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t *mem;
static size_t mem_words;
static uint64_t mem_sum;

static uint64_t checksum(void)
{
	uint64_t h = 1469598103934665603ull;

	for (size_t i = 0; i < mem_words; i++)
		h = (h ^ mem[i]) * 1099511628211ull;
	return h;
}

static int listen_on(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 16) < 0)
		return -1;
	return fd;
}

/* The address of eth0 (network order), 0 while it has none. */
static uint32_t eth0_addr(void)
{
	struct ifreq ifr = { 0 };
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	uint32_t addr = 0;

	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "eth0");
	if (fd >= 0 && ioctl(fd, SIOCGIFADDR, &ifr) == 0)
		addr = ((struct sockaddr_in *)&ifr.ifr_addr)->sin_addr.s_addr;
	if (fd >= 0)
		close(fd);
	return addr;
}

/* A peer: connects to :7001 (over loopback, or eth0's address) and sends
 * "ping N" every 100 ms. */
static void peer_main(int over_eth0)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(7001),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	char buf[64];
	int fd = -1;

	for (int i = 0; i < 200 && fd < 0; i++) {
		if (over_eth0 && !(a.sin_addr.s_addr = eth0_addr())) {
			usleep(20000);
			continue;
		}
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
			close(fd);
			fd = -1;
			usleep(20000);
		}
	}
	if (fd < 0)
		_exit(1);
	for (unsigned long n = 0;; n++) {
		int len = snprintf(buf, sizeof(buf), "ping %lu\n", n);
		if (write(fd, buf, (size_t)len) != len || read(fd, buf, sizeof(buf)) <= 0)
			_exit(2);
		usleep(100000);
	}
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd >= 0) {
		if (write(fd, text, strlen(text)) < 0) {
			/* the test notices a missing file */
		}
		close(fd);
	}
}

int main(int argc, char **argv)
{
	size_t mb = argc > 1 ? strtoul(argv[1], NULL, 10) : 16;
	const char *marker = argc > 2 ? argv[2] : "none";
	unsigned long counter = 0, pongs[2] = { 0, 0 };
	int peer_port[2] = { 0, 0 }, peer_fd[2] = { -1, -1 };
	char marker_read[128] = "";

	signal(SIGPIPE, SIG_IGN);
	mkdir("/data", 0755);
	write_file("/data/marker", marker);
	int ctl = listen_on(7000), pl = listen_on(7001);
	if (ctl < 0 || pl < 0)
		return 1;
	/* Fork before the memory exists, so it is not shared copy-on-write
	 * (criu would write it once per process). */
	for (int k = 0; k < 2 && (argc < 4 || strcmp(argv[3], "nopeer")); k++)
		if (fork() == 0) {
			close(ctl);
			close(pl);
			peer_main(k);
		}
	mem_words = mb * 1024 * 1024 / sizeof(uint64_t);
	mem = malloc(mem_words * sizeof(uint64_t) + 1);
	if (!mem)
		return 1;
	for (size_t i = 0; i < mem_words; i++)
		mem[i] = i * 0x9e3779b97f4a7c15ull ^ (uint64_t)mb;
	mem_sum = checksum();

	struct timespec last;
	clock_gettime(CLOCK_MONOTONIC, &last);
	for (;;) {
		struct pollfd p[4] = { { ctl, POLLIN, 0 }, { pl, POLLIN, 0 },
				       { peer_fd[0], POLLIN, 0 }, { peer_fd[1], POLLIN, 0 } };
		poll(p, 4, 100);
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long ms = (now.tv_sec - last.tv_sec) * 1000 +
			  (now.tv_nsec - last.tv_nsec) / 1000000;
		if (ms >= 100) {
			counter += (unsigned long)(ms / 100);
			last = now;
		}
		if (p[1].revents & POLLIN) {
			struct sockaddr_in a;
			socklen_t al = sizeof(a);
			int fd = accept4(pl, (struct sockaddr *)&a, &al, SOCK_CLOEXEC);
			/* Which peer: loopback (0) or eth0 (1), by source. */
			int k = fd >= 0 && a.sin_addr.s_addr != htonl(INADDR_LOOPBACK);
			if (fd >= 0 && peer_fd[k] < 0) {
				peer_fd[k] = fd;
				peer_port[k] = ntohs(a.sin_port);
			} else if (fd >= 0) {
				close(fd);
			}
		}
		for (int k = 0; k < 2; k++) {
			if (peer_fd[k] < 0 || !(p[2 + k].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			char buf[256];
			ssize_t n = read(peer_fd[k], buf, sizeof(buf));
			if (n <= 0 || write(peer_fd[k], "pong\n", 5) != 5) {
				close(peer_fd[k]);
				peer_fd[k] = -1;
			} else {
				pongs[k]++;
			}
		}
		if (p[0].revents & POLLIN) {
			int c = accept4(ctl, NULL, NULL, SOCK_CLOEXEC);
			char cmd[64], out[512];
			ssize_t n = c >= 0 ? read(c, cmd, sizeof(cmd) - 1) : -1;
			if (n > 4 && !strncmp(cmd, "say ", 4)) {
				cmd[n] = '\0';
				ssize_t w = write(1, cmd + 4, strlen(cmd + 4));
				if (write(c, w > 0 ? "said\n" : "fail\n", 5) < 0) {
					/* the client left */
				}
			} else if (n > 0) {
				int fd = open("/data/marker", O_RDONLY | O_CLOEXEC);
				ssize_t m = fd >= 0 ?
					read(fd, marker_read, sizeof(marker_read) - 1) : 0;
				marker_read[m > 0 ? m : 0] = '\0';
				if (fd >= 0)
					close(fd);
				int len = snprintf(out, sizeof(out),
					"counter=%lu mem=%s peer_port=%d pongs=%lu "
					"peer=%s marker=%s eth_port=%d eth_pongs=%lu eth=%s\n",
					counter, checksum() == mem_sum ? "OK" : "BAD", peer_port[0],
					pongs[0], peer_fd[0] >= 0 ? "up" : "down", marker_read,
					peer_port[1], pongs[1], peer_fd[1] >= 0 ? "up" : "down");
				if (write(c, out, (size_t)len) < 0) {
					/* the client left */
				}
			}
			if (c >= 0)
				close(c);
		}
	}
}
