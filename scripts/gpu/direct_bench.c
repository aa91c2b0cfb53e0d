/* llama.cpp driven directly through its C API, the reference the plugin is measured against
 * on the GPU machine (the crate's copy of llama.cpp ships without llama-bench's source).
 * Built there by scripts/gpu/device.sh against the same CUDA build the plugin runs on.
 *
 *   direct-bench serve MODEL N_PROMPT N_GEN          -> "ready", then per "pp"/"tg" line on
 *                                                       stdin one line: tokens/s of one run
 *   direct-bench batched MODEL N_PROMPT N_GEN N_SEQ  -> {"n_seq": .., "tg_tps": ..} aggregate
 *   direct-bench quantize IN OUT [f16]               -> IN re-quantized as Q4_K_M (or F16)
 *
 * The measurement mirrors the plugin benchmark (tests/bench/src/plugin.rs): a prompt of
 * N_PROMPT tokens of the same story text, decoded in batches of 512, timed to the first
 * greedy token ("pp": a prompt-only run); for "tg", that prompt then N_GEN tokens, one decode
 * and one greedy sample each, only the generation timed. gpu-bench makes the warm-up runs and
 * interleaves these runs with the plugin's and the server's. Context settings
 * are the plugin's: n_ctx = prompt + gen + 16, n_batch = n_ubatch = 512, one sequence, all
 * layers on the GPU. */
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
static int bench_run(struct llama_context *ctx, struct llama_sampler *greedy, llama_token *tokens,
                     int n_prompt, int n_gen, double *pp, double *tg) {
    llama_memory_clear(llama_get_memory(ctx), true);
    double started = now();
    for (int off = 0; off < n_prompt; off += 512) {
        int n = n_prompt - off < 512 ? n_prompt - off : 512;
        if (llama_decode(ctx, llama_batch_get_one(tokens + off, n)) != 0) {
            fprintf(stderr, "prompt decode failed\n");
            return 1;
        }
    }
    llama_token token = llama_sampler_sample(greedy, ctx, -1);
    *pp = n_prompt / (now() - started);
    started = now();
    for (int i = 0; i < n_gen; i++) {
        if (llama_decode(ctx, llama_batch_get_one(&token, 1)) != 0) {
            fprintf(stderr, "generation decode failed\n");
            return 1;
        }
        token = llama_sampler_sample(greedy, ctx, -1);
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

int main(int argc, char **argv) {
    llama_log_set(errors_only, NULL);
    llama_backend_init();
    int rc = 2;
    if (argc == 5 && strcmp(argv[1], "serve") == 0) {
        rc = serve(argv[2], atoi(argv[3]), atoi(argv[4]));
    } else if (argc == 6 && strcmp(argv[1], "batched") == 0) {
        rc = batched(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    } else if (argc == 4 && strcmp(argv[1], "quantize") == 0) {
        rc = quantize(argv[2], argv[3], 0);
    } else if (argc == 5 && strcmp(argv[1], "quantize") == 0 && strcmp(argv[4], "f16") == 0) {
        rc = quantize(argv[2], argv[3], 1);
    } else {
        fprintf(stderr, "usage: direct-bench serve MODEL N_PROMPT N_GEN  (pp/tg lines on stdin)\n"
                        "       direct-bench batched MODEL N_PROMPT N_GEN N_SEQ\n"
                        "       direct-bench quantize IN OUT [f16]\n");
    }
    llama_backend_free();
    return rc;
}
