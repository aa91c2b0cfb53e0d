/* llama.cpp driven directly through its C API, the reference the plugin is measured against
 * on the GPU machine (the crate's copy of llama.cpp ships without llama-bench's source).
 * Built there by scripts/gpu/device.sh against the same CUDA build the plugin runs on.
 *
 *   direct-bench serve MODEL N_PROMPT N_GEN          -> "ready", then per "pp"/"tg" line on
 *                                                       stdin one line: tokens/s of one run
 *   direct-bench batched MODEL N_PROMPT N_GEN N_SEQ  -> {"n_seq": .., "tg_tps": ..} aggregate
 *   direct-bench http MODEL N_PROMPT N_GEN           -> "ready PORT", then streamed completions
 *                                                       on 127.0.0.1:PORT (see http_floor)
 *   direct-bench quantize IN OUT [f16]               -> IN re-quantized as Q4_K_M (or F16)
 *
 * The measurement mirrors the plugin benchmark (tests/bench/src/plugin.rs): a prompt of
 * N_PROMPT tokens of the same story text, decoded in batches of 512, timed to the first
 * greedy token ("pp": a prompt-only run); for "tg", that prompt then N_GEN tokens, one decode
 * and one greedy sample each, only the generation timed. gpu-bench makes the warm-up runs and
 * interleaves these runs with the plugin's and the server's. Context settings
 * are the plugin's: n_ctx = prompt + gen + 16, n_batch = n_ubatch = 512, one sequence, all
 * layers on the GPU. */
#define _GNU_SOURCE /* strcasestr */
#include "llama.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *STORY =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park with her friends and her big red ball. ";

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void errors_only(enum ggml_log_level level, const char *text, void *user) {
    /* CONT continues the previous message (e.g. the loader's progress dots): its level. */
    static enum ggml_log_level last = GGML_LOG_LEVEL_NONE;
    (void)user;
    if (level != GGML_LOG_LEVEL_CONT) {
        last = level;
    }
    if (last == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static int quantize(const char *in, const char *out, int f16) {
    llama_model_quantize_params params = llama_model_quantize_default_params();
    params.ftype = f16 ? LLAMA_FTYPE_MOSTLY_F16 : LLAMA_FTYPE_MOSTLY_Q4_K_M;
    if (llama_model_quantize(in, out, &params) != 0) {
        fprintf(stderr, "quantizing %s failed\n", in);
        return 1;
    }
    return 0;
}

/* BOS + the story repeated, cut at exactly n tokens. */
static llama_token *prompt_tokens(const struct llama_vocab *vocab, int n) {
    size_t len = strlen(STORY);
    size_t copies = (size_t)n / 8 + 2; /* the story is > 8 tokens per copy */
    char *text = malloc(len * copies + 1);
    llama_token *tokens = malloc(sizeof(llama_token) * (size_t)(n + len * copies + 8));
    if (!text || !tokens) {
        return NULL;
    }
    for (size_t i = 0; i < copies; i++) {
        memcpy(text + i * len, STORY, len);
    }
    text[len * copies] = 0;
    int got = llama_tokenize(vocab, text, (int32_t)(len * copies), tokens,
                             (int32_t)(n + len * copies + 8), true, false);
    free(text);
    if (got < n) {
        fprintf(stderr, "the prompt text gave %d tokens, fewer than %d\n", got, n);
        free(tokens);
        return NULL;
    }
    return tokens;
}

/* The model with every layer on the GPU, and a context with the plugin's settings. */
static struct llama_context *open_model(const char *path, int n_ctx, int n_seq,
                                        struct llama_model **model) {
    struct llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 999;
    *model = llama_model_load_from_file(path, mparams);
    if (!*model) {
        fprintf(stderr, "cannot load %s\n", path);
        return NULL;
    }
    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t)n_ctx;
    cparams.n_batch = 512;
    cparams.n_ubatch = 512;
    cparams.n_seq_max = (uint32_t)n_seq;
    cparams.kv_unified = false;
    /* CPU threads: llama.cpp's default (4) unless DIRECT_BENCH_THREADS says, so that gpu-bench
     * can run both sides with the same count. */
    const char *threads = getenv("DIRECT_BENCH_THREADS");
    if (threads && atoi(threads) > 0) {
        cparams.n_threads = cparams.n_threads_batch = atoi(threads);
    }
    struct llama_context *ctx = llama_init_from_model(*model, cparams);
    if (!ctx) {
        fprintf(stderr, "cannot create a context\n");
    }
    return ctx;
}

/* One run: the prompt timed to the first greedy token, then n_gen tokens (none: a prompt-only
 * run); tokens/s of each. */
/* The prompt, decoded in batches of 512 into an empty sequence, and its greedy first token. */
static int prompt_pass(struct llama_context *ctx, struct llama_sampler *greedy, llama_token *tokens,
                       int n_prompt, llama_token *first) {
    for (int off = 0; off < n_prompt; off += 512) {
        int n = n_prompt - off < 512 ? n_prompt - off : 512;
        if (llama_decode(ctx, llama_batch_get_one(tokens + off, n)) != 0) {
            fprintf(stderr, "prompt decode failed\n");
            return 1;
        }
    }
    *first = llama_sampler_sample(greedy, ctx, -1);
    return 0;
}

/* One generation step: decodes *token and replaces it with the next greedy token. */
static int next_token(struct llama_context *ctx, struct llama_sampler *greedy, llama_token *token) {
    if (llama_decode(ctx, llama_batch_get_one(token, 1)) != 0) {
        fprintf(stderr, "generation decode failed\n");
        return 1;
    }
    *token = llama_sampler_sample(greedy, ctx, -1);
    return 0;
}

static int bench_run(struct llama_context *ctx, struct llama_sampler *greedy, llama_token *tokens,
                     int n_prompt, int n_gen, double *pp, double *tg) {
    llama_memory_clear(llama_get_memory(ctx), true);
    double started = now();
    llama_token token;
    if (prompt_pass(ctx, greedy, tokens, n_prompt, &token) != 0) {
        return 1;
    }
    *pp = n_prompt / (now() - started);
    started = now();
    for (int i = 0; i < n_gen; i++) {
        if (next_token(ctx, greedy, &token) != 0) {
            return 1;
        }
    }
    *tg = n_gen > 0 ? n_gen / (now() - started) : 0;
    return 0;
}

/* Single runs on request, for gpu-bench to interleave them one by one with the plugin's and
 * the server's (GPU clocks drift from second to second; runs next to each other see the same
 * state). Prints "ready" once the model is loaded, then reads lines from stdin: "pp" answers
 * the tokens/s of one prompt-only run, "tg" those of the generation of one run of prompt +
 * n_gen. Ends at EOF. */
static int serve(const char *path, int n_prompt, int n_gen) {
    struct llama_model *model = NULL;
    struct llama_context *ctx = open_model(path, n_prompt + n_gen + 16, 1, &model);
    if (!ctx) {
        return 1;
    }
    llama_token *tokens = prompt_tokens(llama_model_get_vocab(model), n_prompt);
    if (!tokens) {
        return 1;
    }
    struct llama_sampler *greedy = llama_sampler_init_greedy();
    printf("ready\n");
    fflush(stdout);
    char line[64];
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, stdin)) {
        int gen = strncmp(line, "tg", 2) == 0;
        if (!gen && strncmp(line, "pp", 2) != 0) {
            fprintf(stderr, "unknown command: %s", line);
            rc = 2;
            break;
        }
        double pp, tg;
        rc = bench_run(ctx, greedy, tokens, n_prompt, gen ? n_gen : 0, &pp, &tg);
        if (rc == 0) {
            printf("%.1f\n", gen ? tg : pp);
            fflush(stdout);
        }
    }
    llama_sampler_free(greedy);
    llama_free(ctx);
    llama_model_free(model);
    free(tokens);
    return rc;
}

/* Index of the largest logit (the plugin's greedy sampler does the same). */
static llama_token argmax(const float *logits, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) {
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    return best;
}

/* N_SEQ sequences decoded together, one token each per llama_decode (the plugin's continuous
 * batching at its simplest): aggregate generated tokens/s after all prompts are in. */
static int batched(const char *path, int n_prompt, int n_gen, int n_seq) {
    struct llama_model *model = NULL;
    struct llama_context *ctx = open_model(path, (n_prompt + n_gen + 16) * n_seq, n_seq, &model);
    if (!ctx) {
        return 1;
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    llama_token *tokens = prompt_tokens(vocab, n_prompt);
    if (!tokens) {
        return 1;
    }
    int cap = n_prompt > n_seq ? n_prompt : n_seq;
    struct llama_batch batch = llama_batch_init(cap, 0, 1);
    llama_token *next = malloc(sizeof(llama_token) * (size_t)n_seq);
    for (int s = 0; s < n_seq; s++) {
        batch.n_tokens = 0;
        for (int i = 0; i < n_prompt; i++) {
            int k = batch.n_tokens++;
            batch.token[k] = tokens[i];
            batch.pos[k] = i;
            batch.n_seq_id[k] = 1;
            batch.seq_id[k][0] = s;
            batch.logits[k] = i == n_prompt - 1;
        }
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "prompt decode failed\n");
            return 1;
        }
        next[s] = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
    }
    double started = now();
    for (int step = 0; step < n_gen; step++) {
        batch.n_tokens = n_seq;
        for (int s = 0; s < n_seq; s++) {
            batch.token[s] = next[s];
            batch.pos[s] = n_prompt + step;
            batch.n_seq_id[s] = 1;
            batch.seq_id[s][0] = s;
            batch.logits[s] = 1;
        }
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "generation decode failed\n");
            return 1;
        }
        for (int s = 0; s < n_seq; s++) {
            next[s] = argmax(llama_get_logits_ith(ctx, s), n_vocab);
        }
    }
    double tps = (double)n_gen * n_seq / (now() - started);
    printf("{\"n_seq\": %d, \"tg_tps\": %.1f}\n", n_seq, tps);
    free(next);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    free(tokens);
    return 0;
}

/* ---- http: the thinnest HTTP front end llama.cpp can have ----
 *
 * How close to direct can any server that speaks HTTP get on this host? One thread accepts a
 * connection and answers its requests (HTTP/1.1, kept alive) itself: for a POST it runs the
 * prompt pass on that same thread and writes the response headers and the first token's
 * event in one send, then one event per further token (`max_tokens` from the body; the body's
 * prompt is not read: the run uses the same N_PROMPT tokens as "serve"), then `[DONE]`.
 * `GET /health` answers "ok". No thread hand-off anywhere: what is left of the time to first
 * token, beyond the prompt pass, is the loopback TCP hops and the client. gpu-bench's
 * `--http-floor` puts it in the rounds beside `llmlocal serve`, with the same client. */

#define REQUEST_MAX (256 * 1024)

static int send_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t sent = send(fd, data, len, MSG_NOSIGNAL);
        if (sent <= 0) {
            return -1;
        }
        data += sent;
        len -= (size_t)sent;
    }
    return 0;
}

/* One request from fd into buf (which may already hold `*have` bytes). Returns its length
 * (head + body; the bytes after it are the next request's), 0 at EOF, -1 on error. */
static int read_request(int fd, char *buf, int *have, int *is_get, int *max_tokens) {
    char *end;
    int need = -1;
    for (;;) {
        buf[*have] = 0;
        if (need < 0 && (end = strstr(buf, "\r\n\r\n")) != NULL) {
            int head = (int)(end - buf) + 4;
            char *length = strcasestr(buf, "\r\ncontent-length:");
            need = head + (length && length < end ? atoi(length + 17) : 0);
            if (need >= REQUEST_MAX) {
                return -1;
            }
        }
        if (need >= 0 && *have >= need) {
            break;
        }
        if (*have >= REQUEST_MAX - 1) {
            return -1;
        }
        ssize_t got = recv(fd, buf + *have, (size_t)(REQUEST_MAX - 1 - *have), 0);
        if (got <= 0) {
            return got == 0 && *have == 0 ? 0 : -1;
        }
        *have += (int)got;
    }
    char kept = buf[need];
    buf[need] = 0;
    *is_get = strncmp(buf, "GET ", 4) == 0;
    char *mt = strstr(buf, "\"max_tokens\":");
    *max_tokens = mt ? atoi(mt + 13) : 1;
    buf[need] = kept;
    return need;
}

static const char EVENT[] = "data: {\"choices\":[{\"index\":0,\"text\":\"x\"}]}\n\n";

static int send_event(int fd, const char *prefix, const char *event) {
    char out[512];
    int len = snprintf(out, sizeof out, "%s%zx\r\n%s\r\n", prefix, strlen(event), event);
    return send_all(fd, out, (size_t)len);
}

/* A streamed completion of max_tokens tokens, decoded on this thread. */
static int answer(int fd, struct llama_context *ctx, struct llama_sampler *greedy,
                  llama_token *tokens, int n_prompt, int max_tokens) {
    static const char HEAD[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n";
    llama_memory_clear(llama_get_memory(ctx), true);
    llama_token token;
    if (prompt_pass(ctx, greedy, tokens, n_prompt, &token) != 0) {
        static const char FAIL[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
        send_all(fd, FAIL, sizeof FAIL - 1);
        return -1;
    }
    if (send_event(fd, HEAD, EVENT) != 0) {
        return -1;
    }
    for (int i = 1; i < max_tokens; i++) {
        if (next_token(ctx, greedy, &token) != 0) {
            return -1; /* the client sees the stream end without [DONE] */
        }
        if (send_event(fd, "", EVENT) != 0) {
            return -1;
        }
    }
    char tail[64];
    int len = snprintf(tail, sizeof tail, "%zx\r\ndata: [DONE]\n\n\r\n0\r\n\r\n",
                       strlen("data: [DONE]\n\n"));
    return send_all(fd, tail, (size_t)len);
}

static void connection(int fd, struct llama_context *ctx, struct llama_sampler *greedy,
                       llama_token *tokens, int n_prompt, char *buf) {
    static const char OK[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
    int one = 1, have = 0, is_get = 0, max_tokens = 1, used;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    while ((used = read_request(fd, buf, &have, &is_get, &max_tokens)) > 0) {
        int rc = is_get ? send_all(fd, OK, sizeof OK - 1)
                        : answer(fd, ctx, greedy, tokens, n_prompt, max_tokens < 1 ? 1 : max_tokens);
        if (rc != 0) {
            break;
        }
        memmove(buf, buf + used, (size_t)(have - used));
        have -= used;
    }
    close(fd);
}

static int http_floor(const char *path, int n_prompt, int n_gen) {
    struct llama_model *model = NULL;
    /* The context "serve" (and the plugin) use: a request may ask for up to n_gen + 1 tokens. */
    struct llama_context *ctx = open_model(path, n_prompt + n_gen + 16, 1, &model);
    llama_token *tokens = ctx ? prompt_tokens(llama_model_get_vocab(model), n_prompt) : NULL;
    char *buf = malloc(REQUEST_MAX);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (!tokens || !buf || lfd < 0) {
        return 1;
    }
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 4) != 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &len) != 0) {
        perror("listen on 127.0.0.1");
        return 1;
    }
    struct llama_sampler *greedy = llama_sampler_init_greedy();
    printf("ready %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            perror("accept");
            break;
        }
        connection(fd, ctx, greedy, tokens, n_prompt, buf);
    }
    llama_sampler_free(greedy);
    llama_free(ctx);
    llama_model_free(model);
    free(tokens);
    free(buf);
    return 1;
}

int main(int argc, char **argv) {
    llama_log_set(errors_only, NULL);
    llama_backend_init();
    int rc = 2;
    if (argc == 5 && strcmp(argv[1], "serve") == 0) {
        rc = serve(argv[2], atoi(argv[3]), atoi(argv[4]));
    } else if (argc == 6 && strcmp(argv[1], "batched") == 0) {
        rc = batched(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    } else if (argc == 5 && strcmp(argv[1], "http") == 0) {
        rc = http_floor(argv[2], atoi(argv[3]), atoi(argv[4]));
    } else if (argc == 4 && strcmp(argv[1], "quantize") == 0) {
        rc = quantize(argv[2], argv[3], 0);
    } else if (argc == 5 && strcmp(argv[1], "quantize") == 0 && strcmp(argv[4], "f16") == 0) {
        rc = quantize(argv[2], argv[3], 1);
    } else {
        fprintf(stderr, "usage: direct-bench serve MODEL N_PROMPT N_GEN  (pp/tg lines on stdin)\n"
                        "       direct-bench batched MODEL N_PROMPT N_GEN N_SEQ\n"
                        "       direct-bench http MODEL N_PROMPT N_GEN  (streamed completions on loopback)\n"
                        "       direct-bench quantize IN OUT [f16]\n");
    }
    llama_backend_free();
    return rc;
}
