/* Parsing and validation of client input: see request.h. */
#include "request.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "cleanup.h"

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int url_unescape(const char *in, size_t n, bool plus_space, char **out, struct herr *err)
{
	_cleanup_free_ char *buf = malloc(n + 1);
	size_t j = 0;

	if (!buf)
		return herr_set(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		if (in[i] == '%') {
			int hi = i + 2 < n ? hexval(in[i + 1]) : -1;
			int lo = i + 2 < n ? hexval(in[i + 2]) : -1;

			if (hi < 0 || lo < 0)
				return herr_set(err, -EINVAL, "invalid percent escape at offset %zu",
						i);
			buf[j++] = (char)(hi * 16 + lo);
			i += 2;
		} else {
			buf[j++] = plus_space && in[i] == '+' ? ' ' : in[i];
		}
	}
	buf[j] = '\0';
	*out = steal_ptr(&buf);
	return (int)j;
}

void meta_filter_free(char **keys, char **values, int n)
{
	for (int i = 0; i < n; i++) {
		free(keys[i]);
		free(values[i]);
	}
}

static int split_pair(const char *item, size_t len, char **key, char **value,
		      struct herr *err)
{
	const char *eq = memchr(item, '=', len);
	int rc;

	if (!eq || memchr(eq + 1, '=', len - (size_t)(eq - item) - 1))
		return herr_set(err, -EINVAL, "invalid metadata filter '%.*s': expected "
				"key=value", (int)(len > 64 ? 64 : len), item);
	rc = url_unescape(item, (size_t)(eq - item), true, key, err);
	if (rc < 0)
		return herr_wrap(err, "metadata filter key");
	rc = url_unescape(eq + 1, len - (size_t)(eq - item) - 1, true, value, err);
	if (rc < 0) {
		free(*key);
		*key = NULL;
		return herr_wrap(err, "metadata filter value");
	}
	return 0;
}

int meta_filter_parse(const char *raw, char **keys, char **values, int cap, int *n,
		      struct herr *err)
{
	_cleanup_free_ char *once = NULL;
	const char *p;
	int rc = url_unescape(raw, strlen(raw), true, &once, err);

	*n = 0;
	if (rc < 0)
		return herr_wrap(err, "metadata filter");
	if (*once == '\0')
		return 0;
	for (p = once;;) {
		const char *amp = strchr(p, '&');
		size_t len = amp ? (size_t)(amp - p) : strlen(p);

		if (*n == cap) {
			/* Leave *n at 0 so a caller that always frees does not
			 * free these entries a second time. */
			meta_filter_free(keys, values, *n);
			*n = 0;
			return herr_set(err, -E2BIG, "metadata filter: more than %d pairs", cap);
		}
		rc = split_pair(p, len, &keys[*n], &values[*n], err);
		if (rc < 0) {
			meta_filter_free(keys, values, *n);
			*n = 0;
			return rc;
		}
		(*n)++;
		if (!amp)
			break;
		p = amp + 1;
	}
	return 0;
}

void time_format(int64_t ms, char out[32])
{
	time_t s = (time_t)(ms / 1000);
	struct tm tm;

	gmtime_r(&s, &tm);
	strftime(out, 24, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + strlen(out), 8, ".%03dZ", (int)(ms % 1000));
}

static int parse_fraction(const char **p, int64_t *ms)
{
	int digits = 0, value = 0;

	if (**p != '.')
		return 0;
	(*p)++;
	while (**p >= '0' && **p <= '9') {
		if (digits < 3)
			value = value * 10 + (**p - '0');
		digits++;
		(*p)++;
	}
	if (digits == 0 || digits > 9)
		return -1;
	for (int d = digits; d < 3; d++)
		value *= 10;
	*ms += value;
	return 0;
}

static int parse_offset(const char *p, int64_t *offset_s)
{
	int hh, mm, used = 0;

	if (strcmp(p, "Z") == 0 || strcmp(p, "z") == 0) {
		*offset_s = 0;
		return 0;
	}
	if ((p[0] != '+' && p[0] != '-') ||
	    sscanf(p + 1, "%2d:%2d%n", &hh, &mm, &used) != 2 || p[1 + used] != '\0' ||
	    used != 5 || hh > 23 || mm > 59)
		return -1;
	*offset_s = (p[0] == '-' ? -1 : 1) * (int64_t)(hh * 3600 + mm * 60);
	return 0;
}

int time_parse(const char *s, int64_t *ms, struct herr *err)
{
	struct tm tm = { 0 };
	const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	int64_t frac = 0, offset = 0;

	if (!p || parse_fraction(&p, &frac) < 0 || parse_offset(p, &offset) < 0)
		return herr_set(err, -EINVAL, "'%.64s' is not an RFC 3339 time", s);
	*ms = ((int64_t)timegm(&tm) - offset) * 1000 + frac;
	return 0;
}

int page_token_encode(int64_t started_at, const char *id, bool ascending, char *out,
		      size_t cap)
{
	char raw[128];
	int n = snprintf(raw, sizeof(raw), "%lld__%s__%s", (long long)started_at, id,
			 ascending ? "asc" : "desc");

	if (n < 0 || (size_t)n >= sizeof(raw) || cap < ((size_t)n + 2) / 3 * 4 + 1)
		return -E2BIG;
	n = EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)raw, n);
	for (int i = 0; i < n; i++) {
		if (out[i] == '+')
			out[i] = '-';
		else if (out[i] == '/')
			out[i] = '_';
	}
	return 0;
}

int page_token_decode(const char *token, bool ascending, int64_t *started_at,
		      char *id, size_t id_cap, struct herr *err)
{
	char b64[200], raw[160], order[8], idbuf[80];
	size_t n = strlen(token);
	long long t;
	int len, used = 0;

	if (n == 0 || n >= sizeof(b64) || n % 4 != 0)
		return herr_set(err, -EINVAL, "Invalid next token");
	for (size_t i = 0; i <= n; i++)
		b64[i] = token[i] == '-' ? '+' : token[i] == '_' ? '/' : token[i];
	len = EVP_DecodeBlock((unsigned char *)raw, (const unsigned char *)b64, (int)n);
	if (len < 0)
		return herr_set(err, -EINVAL, "Invalid next token");
	while (len > 0 && raw[len - 1] == '\0')
		len--;
	raw[len] = '\0';
	if (sscanf(raw, "%lld__%79[a-z0-9]__%7[a-z]%n", &t, idbuf, order, &used) != 3 ||
	    used != len || strcmp(order, ascending ? "asc" : "desc") != 0 ||
	    strlen(idbuf) >= id_cap)
		return herr_set(err, -EINVAL, "Invalid next token");
	*started_at = t;
	memcpy(id, idbuf, strlen(idbuf) + 1);
	return 0;
}

static int env_name_ok(const char *k)
{
	if (!*k || (*k >= '0' && *k <= '9'))
		return 0;
	for (; *k; k++)
		if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') ||
		      (*k >= '0' && *k <= '9') || *k == '_'))
			return 0;
	return 1;
}

int string_map_validate(json_t *obj, const char *field, int max_pairs, size_t key_max,
			size_t value_max, bool env_names, struct herr *err)
{
	const char *k;
	json_t *v;

	if (!json_is_object(obj))
		return herr_set(err, -EINVAL, "'%s' must be an object of strings", field);
	if ((int)json_object_size(obj) > max_pairs)
		return herr_set(err, -EINVAL, "'%s' has more than %d entries", field,
				max_pairs);
	json_object_foreach(obj, k, v) {
		if (!json_is_string(v))
			return herr_set(err, -EINVAL, "'%s.%.64s' must be a string", field, k);
		if (*k == '\0' || strlen(k) > key_max)
			return herr_set(err, -EINVAL, "'%s' keys must be 1 to %zu bytes", field,
					key_max);
		if (env_names && !env_name_ok(k))
			return herr_set(err, -EINVAL, "'%s': '%.64s' is not a valid variable "
					"name", field, k);
		if (json_string_length(v) > value_max ||
		    strlen(json_string_value(v)) != json_string_length(v))
			return herr_set(err, -EINVAL, "'%s.%.64s' is too long or holds a NUL",
					field, k);
	}
	return 0;
}

/* IPv4 address or CIDR; rejects unspecified 0.0.0.0 except 0.0.0.0/0. */
static int cidr_valid(const char *s)
{
	char addr[INET_ADDRSTRLEN + 4];
	const char *slash = strchr(s, '/');
	struct in_addr a;
	size_t alen = slash ? (size_t)(slash - s) : strlen(s);

	if (alen == 0 || alen >= INET_ADDRSTRLEN)
		return 0;
	memcpy(addr, s, alen);
	addr[alen] = '\0';
	if (inet_pton(AF_INET, addr, &a) != 1)
		return 0;
	if (slash) {
		char *end;
		long bits = strtol(slash + 1, &end, 10);

		if (slash[1] == '\0' || *end || bits < 0 || bits > 32)
			return 0;
		if (a.s_addr == 0)
			return bits == 0;
		return 1;
	}
	return a.s_addr != 0;
}

static int copy_cidr_list(json_t *list, const char *field, json_t *out, struct herr *err)
{
	size_t i;
	json_t *v;

	if (!list || json_is_null(list))
		return 0;
	if (!json_is_array(list) || json_array_size(list) > 256)
		return herr_set(err, -EINVAL, "'network.%s' must be an array of at most 256 "
				"strings", field);
	json_array_foreach(list, i, v) {
		const char *s = json_string_value(v);

		if (!s)
			return herr_set(err, -EINVAL, "'network.%s[%zu]' must be a string",
					field, i);
		if (!cidr_valid(s)) {
			if (strcmp(field, "denyOut") == 0)
				return herr_set(err, -EINVAL, "invalid denied CIDR %.64s", s);
			return herr_set(err, -EINVAL, "invalid allowed address %.64s: this "
					"node filters egress by IPv4 address or CIDR only, "
					"not by domain name", s);
		}
		json_array_append_new(out, json_string(s));
	}
	return 0;
}

static int reject_unsupported(json_t *net, struct herr *err)
{
	json_t *rules = json_object_get(net, "rules");
	json_t *proxy = json_object_get(net, "egressProxy");

	if (rules && !json_is_null(rules) &&
	    !(json_is_object(rules) && json_object_size(rules) == 0))
		return herr_set(err, -EINVAL, "Network transform rules are not supported on "
				"this node");
	if (proxy && !json_is_null(proxy))
		return herr_set(err, -EINVAL, "Egress proxy is not supported on this node");
	return 0;
}

static int network_flags(json_t *net, bool secure, json_t *out, struct herr *err)
{
	json_t *pub = json_object_get(net, "allowPublicTraffic");
	json_t *mask = json_object_get(net, "maskRequestHost");
	bool public_traffic = true;

	if (pub && !json_is_null(pub)) {
		if (!json_is_boolean(pub))
			return herr_set(err, -EINVAL, "'network.allowPublicTraffic' must be a "
					"boolean");
		public_traffic = json_is_true(pub);
	}
	if (!public_traffic && !secure)
		return herr_set(err, -EINVAL, "allowPublicTraffic=false requires a secure "
				"sandbox");
	json_object_set_new(out, "allowPublicTraffic", json_boolean(public_traffic));
	if (mask && !json_is_null(mask)) {
		if (!json_is_string(mask) || json_string_length(mask) > 253)
			return herr_set(err, -EINVAL, "'network.maskRequestHost' must be a "
					"host name");
		json_object_set(out, "maskRequestHost", mask);
	}
	return 0;
}

int network_build(json_t *net, json_t *allow_internet, bool secure, json_t **out,
		  struct herr *err)
{
	json_t *res = json_pack("{s:[],s:[]}", "allowOut", "denyOut");
	json_t *deny;
	int rc;

	if (!res)
		return herr_set(err, -ENOMEM, "out of memory");
	if (net && !json_is_null(net) && !json_is_object(net))
		rc = herr_set(err, -EINVAL, "'network' must be an object");
	else if (allow_internet && !json_is_null(allow_internet) &&
		 !json_is_boolean(allow_internet))
		rc = herr_set(err, -EINVAL, "'allow_internet_access' must be a boolean");
	else
		rc = 0;
	if (rc == 0 && net && json_is_object(net)) {
		rc = reject_unsupported(net, err);
		if (rc == 0)
			rc = copy_cidr_list(json_object_get(net, "allowOut"), "allowOut",
					    json_object_get(res, "allowOut"), err);
		if (rc == 0)
			rc = copy_cidr_list(json_object_get(net, "denyOut"), "denyOut",
					    json_object_get(res, "denyOut"), err);
	}
	if (rc == 0)
		rc = network_flags(net && json_is_object(net) ? net : NULL, secure, res, err);
	if (rc == 0 && json_is_false(allow_internet)) {
		deny = json_pack("[s]", "0.0.0.0/0");
		json_object_set_new(res, "denyOut", deny);
	}
	if (rc == 0 && allow_internet && json_is_boolean(allow_internet))
		json_object_set(res, "allowInternetAccess", allow_internet);
	if (rc < 0) {
		json_decref(res);
		return rc;
	}
	*out = res;
	return 0;
}

int template_ref_valid(const char *ref)
{
	size_t n = strlen(ref), colons = 0, slashes = 0;

	if (n == 0 || n > TEMPLATE_REF_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = ref[i];

		if (c == ':')
			colons++;
		else if (c == '/')
			slashes++;
		else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			   (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
			return 0;
	}
	return colons <= 1 && slashes <= 1 && ref[0] != '/' && ref[0] != ':' &&
	       ref[0] != '.';
}
