/* A stand-in for Nelogica's ProfitDLL with the same exported functions and callback signatures
 * (C calling convention; the real DLL is stdcall on Windows). Every callback is called from a
 * thread of this library, never from the caller's, as the real DLL does (one job at a time, as on its
 * one ConnectorThread). The trades it sends are fixed here so the test knows exactly what must arrive.
 * Its order books are in the second half of this file. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <wchar.h>

typedef struct { const wchar_t *pwcTicker; const wchar_t *pwcBolsa; int nFeed; } TAssetIDRec;
typedef void (*TStateCallback)(int nConnStateType, int nResult);
typedef void (*TNewTradeCallback)(TAssetIDRec, const wchar_t *, unsigned int, double, double, int, int, int, int,
                                  unsigned char);
typedef void (*THistoryTradeCallback)(TAssetIDRec, const wchar_t *, unsigned int, double, double, int, int, int,
                                      int);
typedef void (*TProgressCallback)(TAssetIDRec, int);
typedef void (*TAny)(void);
typedef unsigned char uc; /* the manual's Char flags: one byte */
typedef void (*TOfferBookCallback)(TAssetIDRec, int, int, int, int, int, int64_t, double, uc, uc, uc, uc, uc,
                                   const wchar_t *, void *, void *);
typedef void (*TOfferBookCallbackV2)(TAssetIDRec, int, int, int, int64_t, int, int64_t, double, uc, uc, uc, uc, uc,
                                     const wchar_t *, void *, void *);
typedef void (*TPriceBookCallback)(TAssetIDRec, int, int, int, int, int, double, void *, void *);
typedef void (*TPriceBookCallbackV2)(TAssetIDRec, int, int, int, int64_t, int, double, void *, void *);

static TStateCallback on_state;
static TNewTradeCallback on_trade;
static THistoryTradeCallback on_history;
static TProgressCallback on_progress;
static int login_ok;
static wchar_t subscribed[64];

typedef struct {
    const wchar_t *ticker; const wchar_t *date; unsigned int number; double price; double volume; int qty;
    int buyer; int seller; int type; unsigned char edit;
} Trade;

/* what a subscription streams: buy and sell aggressions, a cross, an edit, a malformed date, a huge id */
static const Trade LIVE[] = {
    {L"WDOF26", L"24/11/2025 10:15:30.123", 1001, 5412.5, 108250.0, 2, 3, 120, 2, 0},
    {L"WDOF26", L"24/11/2025 10:15:30.123", 1002, 5413.0, 54130.0, 1, 72, 8, 3, 0},
    {L"WDOF26", L"24/11/2025 10:15:31.007", 1003, 5413.0, 270650.0, 5, 45, 45, 1, 0},
    {L"WDOF26", L"31/02/2025 10:15:31.500", 1004, 5413.5, 54135.0, 1, 3, 8, 2, 0},
    {L"WDOF26", L"24/11/2025 10:15:30.123", 1001, 5412.0, 108240.0, 2, 3, 120, 2, 1},
    {L"WDOF26", L"24/11/2025 10:15:32.999", 4000000000u, 5414.0, 54140.0, 1, 386, 3, 3, 0},
};
static void send_trade(const Trade *t, int history) {
    TAssetIDRec asset = {t->ticker, L"F", 0};
    if (history)
        on_history(asset, t->date, t->number, t->price, t->volume, t->qty, t->buyer, t->seller, t->type);
    else
        on_trade(asset, t->date, t->number, t->price, t->volume, t->qty, t->buyer, t->seller, t->type, t->edit);
}

static void *login_thread(void *arg) {
    (void)arg;
    usleep(10000);
    if (!login_ok) { on_state(0, 1); return NULL; }  /* login: invalid credentials */
    on_state(0, 0);  /* login connected */
    on_state(2, 4);  /* market data connected */
    return NULL;
}

static void *live_thread(void *arg) {
    (void)arg;
    for (size_t i = 0; i < sizeof LIVE / sizeof LIVE[0]; i++) send_trade(&LIVE[i], 0);
    return NULL;
}

/* Every job runs on a thread of its own but holds `connector` throughout: one at a time, as the real
 * DLL's single ConnectorThread. `running` counts jobs not finished (FakeBusy). */
static pthread_mutex_t connector = PTHREAD_MUTEX_INITIALIZER;
static int running;
typedef struct { void *(*fn)(void *); intptr_t arg; } Job;

static void *run_job(void *p) {
    Job job = *(Job *)p;
    free(p);
    pthread_mutex_lock(&connector);
    job.fn((void *)job.arg);
    pthread_mutex_unlock(&connector);
    __atomic_sub_fetch(&running, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static int spawn_arg(void *(*fn)(void *), intptr_t arg) {
    pthread_t t;
    Job *job = malloc(sizeof *job);
    if (job == NULL) return -1;
    job->fn = fn; job->arg = arg;
    __atomic_add_fetch(&running, 1, __ATOMIC_SEQ_CST);
    if (pthread_create(&t, NULL, run_job, job) != 0) {
        __atomic_sub_fetch(&running, 1, __ATOMIC_SEQ_CST);
        free(job);
        return -1;
    }
    pthread_detach(t);
    return 0;
}

static int spawn(void *(*fn)(void *)) { return spawn_arg(fn, 0); }

static TOfferBookCallback offer_v1;
static TOfferBookCallbackV2 offer_v2;
static TPriceBookCallback price_v1;
static TPriceBookCallbackV2 price_v2;

/* The price and offer book slots take the V1 callbacks (32-bit quantities); NULL registers none. */
int DLLInitializeMarketLogin(const wchar_t *key, const wchar_t *user, const wchar_t *password, TStateCallback state,
                             TNewTradeCallback trade, TAny daily, TPriceBookCallback price_book,
                             TOfferBookCallback offer_book, THistoryTradeCallback history, TProgressCallback progress,
                             TAny tiny_book) {
    (void)daily; (void)tiny_book;
    on_state = state; on_trade = trade; on_history = history; on_progress = progress;
    price_v1 = price_book; offer_v1 = offer_book;
    login_ok = wcscmp(key, L"KEY-123") == 0 && wcscmp(user, L"trader") == 0 && wcscmp(password, L"s3cret") == 0;
    return spawn(login_thread);
}

int SubscribeTicker(const wchar_t *ticker, const wchar_t *exchange) {
    (void)exchange;
    wcsncpy(subscribed, ticker, 63);
    return spawn(live_thread);
}

int UnsubscribeTicker(const wchar_t *ticker, const wchar_t *exchange) { (void)ticker; (void)exchange; return 0; }

/* ---- history: GetHistoryTrades serves, for any range, one trade every `history_step` seconds of it
 * that falls in 09:00-18:30 (trade number: that time's step of the day + 1, so a range asked twice
 * gives the same trades), two bad trades among them (an impossible date, a zero price), and progress
 * in quarters with 100 after the last trade, all on the connector thread as the real DLL. */
typedef struct { wchar_t ticker[64]; long long start, end; } HistoryAsk;
static int history_step = 60;
static long history_asks, history_sent, history_v1_calls, history_v2_calls;

/* V2 (the manual's recommended history callback): a trade pointer the client reads with TranslateTrade */
typedef struct { uint16_t wYear, wMonth, wDayOfWeek, wDay, wHour, wMinute, wSecond, wMilliseconds; } SystemTime;
typedef struct { uint8_t Version; const wchar_t *Ticker; const wchar_t *Exchange; uint8_t FeedType; } TConnectorAssetIdentifier;
typedef struct {
    uint8_t Version; SystemTime TradeDate; uint32_t TradeNumber; double Price; int64_t Quantity; double Volume;
    int32_t BuyAgent; int32_t SellAgent; uint8_t TradeType;
} TConnectorTrade;
typedef void (*TConnectorTradeCallback)(TConnectorAssetIdentifier, const void *, uint32_t);
#define TC_LAST_PACKET 2u
static TConnectorTradeCallback on_history_v2;

#ifndef FAKE_V1_HISTORY_ONLY /* built without: a DLL that predates the V2 history callback */
int SetHistoryTradeCallbackV2(TConnectorTradeCallback cb) {
    pthread_mutex_lock(&connector); on_history_v2 = cb; pthread_mutex_unlock(&connector); return 0;
}
int TranslateTrade(const void *trade, TConnectorTrade *out) {
    if (trade == NULL || out == NULL || out->Version != 0) return -2147483645; /* NL_ERR_INVALID_ARGS */
    *out = *(const TConnectorTrade *)trade;
    return 0;
}
#endif

/* one history trade to every registered history callback (both, when a client registered both) */
static void send_history(TAssetIDRec asset, const wchar_t *date, const struct tm *tm, int ms, unsigned int number,
                         double price, int qty, int type, uint32_t flags) {
    if (on_history != NULL) {
        on_history(asset, date, number, price, price * 0.2 * qty, qty, 15, 16, type);
        history_v1_calls++;
    }
    if (on_history_v2 != NULL) {
        TConnectorTrade t = {0, {(uint16_t)(tm->tm_year + 1900), (uint16_t)(tm->tm_mon + 1), 0, (uint16_t)tm->tm_mday,
                                 (uint16_t)tm->tm_hour, (uint16_t)tm->tm_min, (uint16_t)tm->tm_sec, (uint16_t)ms},
                             number, price, qty, price * 0.2 * qty, 15, 16, (uint8_t)type};
        TConnectorAssetIdentifier id = {0, asset.pwcTicker, asset.pwcBolsa, 0};
        on_history_v2(id, &t, flags);
        history_v2_calls++;
    }
}

static long long parse_dll_date(const wchar_t *text) { /* 'DD/MM/YYYY HH:mm:SS' as naive seconds, -1: bad */
    int d, mo, y, h, mi, s;
    if (text == NULL || swscanf(text, L"%d/%d/%d %d:%d:%d", &d, &mo, &y, &h, &mi, &s) != 6) return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 59) return -1;
    struct tm tm = {0};
    tm.tm_mday = d; tm.tm_mon = mo - 1; tm.tm_year = y - 1900; tm.tm_hour = h; tm.tm_min = mi; tm.tm_sec = s;
    return (long long)timegm(&tm);
}

static int in_session(long long t) { long long s = t % 86400; return s >= 9 * 3600 && s <= 18 * 3600 + 1800; }

static void *history_job(void *arg) {
    HistoryAsk *ask = arg;
    TAssetIDRec asset = {ask->ticker, L"F", 0};
    long total = 0, sent = 0, k = 0;
    for (long long t = ask->start; t <= ask->end; t += history_step) total += in_session(t);
    if (total >= 5) total += 2; /* the two bad ones */
    int reported = 0;
    for (long long t = ask->start; t <= ask->end; t += history_step) {
        if (!in_session(t)) continue;
        time_t when = (time_t)t;
        struct tm tm;
        gmtime_r(&when, &tm);
        wchar_t date[32];
        swprintf(date, 32, L"%02d/%02d/%04d %02d:%02d:%02d.%03d", tm.tm_mday, tm.tm_mon + 1, tm.tm_year + 1900,
                 tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(k * 7 % 1000));
        unsigned int number = (unsigned int)(t % 86400 / history_step + 1);
        double price = 130000.0 + 5.0 * (double)(k % 20);
        int qty = 1 + (int)(k % 3);
        int ms = (int)(k * 7 % 1000), last = t + history_step > ask->end;
        send_history(asset, date, &tm, ms, number, price, qty, k % 2 ? 3 : 2, last ? TC_LAST_PACKET : 0);
        sent++; k++;
        if (total >= 5 && k == 2) { /* an impossible date, then a zero price: both to be rejected */
            struct tm feb31 = tm;
            feb31.tm_mday = 31; feb31.tm_mon = 1;
            send_history(asset, L"31/02/2026 10:00:00.000", &feb31, 0, 900001, 130000.0, 1, 2, 0);
            send_history(asset, date, &tm, ms, 900002, 0.0, 1, 2, 0);
            sent += 2;
        }
        int percent = (int)(sent * 100 / total);
        if (percent / 25 > reported && percent < 100) { reported = percent / 25; on_progress(asset, reported * 25); }
    }
    __atomic_add_fetch(&history_sent, sent, __ATOMIC_SEQ_CST);
    on_progress(asset, 100);
    free(ask);
    return NULL;
}

int GetHistoryTrades(const wchar_t *ticker, const wchar_t *exchange, const wchar_t *start, const wchar_t *end) {
    (void)exchange;
    long long from = parse_dll_date(start), to = parse_dll_date(end);
    if (ticker == NULL || from < 0 || to < 0 || to < from) return -2147483645; /* NL_ERR_INVALID_ARGS */
    HistoryAsk *ask = calloc(1, sizeof *ask);
    if (ask == NULL) return -1;
    wcsncpy(ask->ticker, ticker, 63);
    ask->start = from; ask->end = to;
    __atomic_add_fetch(&history_asks, 1, __ATOMIC_SEQ_CST);
    return spawn_arg(history_job, (intptr_t)ask);
}

/* test controls: seconds between history trades; requests served; trades sent (bad ones included) */
void FakeHistoryStep(int seconds) { history_step = seconds > 0 ? seconds : 60; }
long FakeHistoryAsks(void) { return history_asks; }
long FakeHistorySent(void) { return history_sent; }
long FakeHistoryCalls(int version) { return version == 2 ? history_v2_calls : history_v1_calls; }

int FakeBusy(void) { return __atomic_load_n(&running, __ATOMIC_SEQ_CST); }

/* Waits (up to 10 s) for the jobs under way, then forgets the book callbacks: their owner is going. */
int DLLFinalize(void) {
    for (int i = 0; i < 10000 && FakeBusy(); i++) usleep(1000);
    pthread_mutex_lock(&connector);
    offer_v1 = NULL; offer_v2 = NULL; price_v1 = NULL; price_v2 = NULL;
    pthread_mutex_unlock(&connector);
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * The order books: the offer book (by order) and the price book (by level), kept as the real DLL
 * describes them, one positional list per side whose END is the best entry; a callback's nPosition
 * counts from that end (index = size - position - 1; an add at position p goes to index size - p).
 * Every message is applied to this book and sent to the registered callbacks: V2 (64-bit
 * quantities) and, when registered too, V1 (32-bit), so both receive every update, as the real DLL
 * does. Full books are pages malloc'd here, freed only by FreePointer (counted per version).
 * Delete and DeleteFrom are sent with price, quantity and id zeroed; a message with the has-date
 * flag 0 carries the previous (stale) date text; offer edits carry quantity deltas (the manual's
 * example adds them), price-book edits a level's new total. */

enum { AT_ADD, AT_EDIT, AT_DELETE, AT_DELETE_FROM, AT_FULL_BOOK };
enum { OFFER, PRICE };            /* which book */
enum { BUY, SELL };               /* sides as the DLL numbers them */
#define MAXN 2048
#define MAXPAGES 4096
#define OB_LAST_PACKET 1u

typedef struct { double price; int64_t qty; int extra; int64_t id; } Entry; /* extra: agent, or a level's count */
static Entry book[2][2][MAXN];
static int book_n[2][2];
static wchar_t book_ticker[2][64];
static long calls[2][3];                   /* [book][version]: callbacks made */
static long pages_made[3], pages_freed[3]; /* [version] */
static long bad_frees;                     /* unknown pointer, or a size other than the page's */
typedef struct { void *ptr; int size; int version; } Outstanding;
static Outstanding outstanding[MAXPAGES];
static int n_outstanding;
static pthread_mutex_t page_lock = PTHREAD_MUTEX_INITIALIZER;
static long clock_ms;                      /* the fake exchange clock, from 24/11/2025 10:00:00.000 */
static wchar_t wdate[32];
static char cdate[32];
static uint64_t rng = 88172645463325252ull;

static uint32_t rnd(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)(rng >> 32); }
static int below(int n) { return n > 0 ? (int)(rnd() % (uint32_t)n) : 0; }

static void tick_clock(int has_date) {
    if (!has_date) return; /* the text stays what it was: stale */
    clock_ms += 1 + below(400);
    long t = 10L * 3600000 + clock_ms;
    snprintf(cdate, sizeof cdate, "24/11/2025 %02ld:%02ld:%02ld.%03ld", t / 3600000 % 24, t / 60000 % 60,
             t / 1000 % 60, t % 1000);
    for (int i = 0; i < 32; i++) wdate[i] = (wchar_t)cdate[i];
}

/* ---- pages ---- */
static void *new_page(int size, int version) {
    void *p = calloc(1, (size_t)size);
    pthread_mutex_lock(&page_lock);
    if (n_outstanding < MAXPAGES) outstanding[n_outstanding++] = (Outstanding){p, size, version};
    pages_made[version]++;
    pthread_mutex_unlock(&page_lock);
    return p;
}

int FreePointer(void *ptr, int size) {
    pthread_mutex_lock(&page_lock);
    for (int i = 0; i < n_outstanding; i++) {
        if (outstanding[i].ptr != ptr) continue;
        if (outstanding[i].size != size) bad_frees++;
        pages_freed[outstanding[i].version]++;
        outstanding[i] = outstanding[--n_outstanding];
        pthread_mutex_unlock(&page_lock);
        free(ptr);
        return 0;
    }
    bad_frees++;
    pthread_mutex_unlock(&page_lock);
    return -1;
}

static char *put(char *at, const void *value, size_t n) { memcpy(at, value, n); return at + n; }

/* header (int32 count, int32 size), entries, trailer (uint32 flags) */
static void *offer_page(const Entry *e, int n, int last, int version) {
    int16_t length = (int16_t)strlen(cdate);
    int size = 8 + n * ((version == 2 ? 30 : 26) + length) + 4;
    char *page = new_page(size, version), *at = page;
    uint32_t flags = last ? OB_LAST_PACKET : 0;
    at = put(at, &n, 4); at = put(at, &size, 4);
    for (int i = 0; i < n; i++) {
        int32_t qty32 = (int32_t)e[i].qty;
        at = put(at, &e[i].price, 8);
        at = version == 2 ? put(at, &e[i].qty, 8) : put(at, &qty32, 4);
        at = put(at, &e[i].extra, 4); at = put(at, &e[i].id, 8);
        at = put(at, &length, 2); at = put(at, cdate, (size_t)length);
    }
    put(at, &flags, 4);
    return page;
}

/* the manual's price-book layout: header, entries (V2: float64 price, int64 quantity, uint32 count), no trailer */
static void *price_page(const Entry *e, int n, int version) {
    int size = 8 + n * (version == 2 ? 20 : 16);
    char *page = new_page(size, version), *at = page;
    at = put(at, &n, 4); at = put(at, &size, 4);
    for (int i = 0; i < n; i++) {
        int32_t qty32 = (int32_t)e[i].qty, count = e[i].extra;
        at = put(at, &e[i].price, 8);
        at = version == 2 ? put(at, &e[i].qty, 8) : put(at, &qty32, 4);
        at = put(at, &count, 4);
    }
    return page;
}

/* ---- one message to every registered callback ---- */
typedef struct {
    int action, position, side;
    int64_t qty;
    int extra;    /* agent, or a level's count */
    int64_t id;
    double price;
    uc has_price, has_qty, has_date, has_id, has_agent;
    const Entry *page[2]; /* full book: [BUY], [SELL] entries of this page (NULL: no page for that side) */
    int page_n[2], page_last[2];
} Msg;

static void send_msg(int which, const Msg *m) {
    TAssetIDRec asset = {book_ticker[which], L"F", 0};
    for (int version = 2; version >= 1; version--) {
        void *array[2] = {NULL, NULL};
        int registered = which == OFFER ? (version == 2 ? offer_v2 != NULL : offer_v1 != NULL)
                                        : (version == 2 ? price_v2 != NULL : price_v1 != NULL);
        if (!registered) continue;
        for (int s = BUY; s <= SELL; s++)
            if (m->page[s] != NULL)
                array[s] = which == OFFER ? offer_page(m->page[s], m->page_n[s], m->page_last[s], version)
                                          : price_page(m->page[s], m->page_n[s], version);
        calls[which][version]++;
        if (which == OFFER && version == 2)
            offer_v2(asset, m->action, m->position, m->side, m->qty, m->extra, m->id, m->price, m->has_price,
                     m->has_qty, m->has_date, m->has_id, m->has_agent, wdate, array[SELL], array[BUY]);
        else if (which == OFFER)
            offer_v1(asset, m->action, m->position, m->side, (int)m->qty, m->extra, m->id, m->price, m->has_price,
                     m->has_qty, m->has_date, m->has_id, m->has_agent, wdate, array[SELL], array[BUY]);
        else if (version == 2)
            price_v2(asset, m->action, m->position, m->side, m->qty, m->extra, m->price, array[SELL], array[BUY]);
        else
            price_v1(asset, m->action, m->position, m->side, (int)m->qty, m->extra, m->price, array[SELL],
                     array[BUY]);
    }
}

/* ---- the positional lists ---- */
static Msg incremental(int action, int side, int position) {
    Msg m = {0};
    m.action = action; m.side = side; m.position = position;
    m.has_date = 1;
    return m;
}

/* Applies a message to our own book, then sends it (a message the book refuses is sent unapplied: bad input). */
static void act(int which, Msg m) {
    Entry *list = book[which][m.side == SELL];
    int *n = &book_n[which][m.side == SELL];
    tick_clock(m.has_date);
    if (m.action == AT_ADD && m.position >= 0 && m.position <= *n && *n < MAXN) {
        int at = *n - m.position;
        memmove(&list[at + 1], &list[at], sizeof(Entry) * (size_t)(*n - at));
        list[at] = (Entry){m.price, m.qty, m.extra, m.id};
        (*n)++;
    } else if (m.action == AT_EDIT && m.position >= 0 && m.position < *n) {
        Entry *e = &list[*n - m.position - 1];
        if (which == OFFER) { e->qty += m.qty; if (m.has_agent) e->extra = m.extra; }
        else { e->qty = m.qty; e->extra = m.extra; }
    } else if ((m.action == AT_DELETE || m.action == AT_DELETE_FROM) && m.position >= 0 && m.position < *n) {
        int at = *n - m.position - 1;
        if (m.action == AT_DELETE) {
            memmove(&list[at], &list[at + 1], sizeof(Entry) * (size_t)(*n - at - 1));
            (*n)--;
        } else {
            *n = at; /* that position and every better one */
        }
        m.price = 0; m.qty = 0; m.id = 0; /* removal is positional: the DLL zeroes the rest */
    }
    send_msg(which, &m);
}

/* Sends the whole book as full-book pages of at most `per_page` entries a side, each side's last page
 * flagged OB_LAST_PACKET; a side with fewer pages is absent (NULL) from the later callbacks. */
static void send_full(int which, int per_page) {
    int sent[2] = {0, 0}, first = 1;
    tick_clock(1);
    while (first || sent[BUY] < book_n[which][BUY] || sent[SELL] < book_n[which][SELL]) {
        Msg m = incremental(AT_FULL_BOOK, 0, 0);
        for (int s = BUY; s <= SELL; s++) {
            int left = book_n[which][s] - sent[s];
            if (!first && left <= 0) continue; /* this side's last page went already */
            int n = left < per_page ? left : per_page;
            m.page[s] = &book[which][s][sent[s]];
            m.page_n[s] = n;
            m.page_last[s] = sent[s] + n >= book_n[which][s];
            sent[s] += n;
        }
        first = 0;
        send_msg(which, &m);
    }
}

static void set_side(int which, int side, const Entry *entries, int n) {
    memcpy(book[which][side], entries, sizeof(Entry) * (size_t)n);
    book_n[which][side] = n;
}

/* ---- scripted phases (tests/test_profitdll_book_ctypes.py states what each must produce) ---- */
static const Entry OPEN_SELL[] = {
    {5420.0, 10, 3, 101}, {5419.5, 20, 72, 102}, {5419.0, 30, 8, 103}, {5418.5, 40, 120, 104},
    {5418.0, 50, 45, 105}, {5417.5, 60, 3, 106}, {5417.0, 70, 72, 107},
};
static const Entry OPEN_BUY[] = {
    {5412.0, 5, 3, 201}, {5413.0, 3000000000LL, 8, 202}, {5414.0, 7, 45, 203}, {5415.0, 8, 72, 204},
    {5416.0, 9, 120, 205},
};
static const Entry RESYNC_SELL[] = {
    {5423.0, 1, 3, 401}, {5422.0, 2, 8, 402}, {5421.5, 3, 45, 403}, {5421.0, 4, 72, 404}, {5420.5, 5, 120, 405},
};
static const Entry RESYNC_BUY[] = {{5418.0, 6, 3, 501}, {5419.0, 7, 8, 502}, {5419.5, 8, 45, 503}, {5420.0, 9, 72, 504}};
static const Entry LEVELS_SELL[] = {
    {5420.0, 10, 1, 0}, {5419.5, 20, 2, 0}, {5419.0, 30, 3, 0}, {5418.5, 40, 4, 0}, {5418.0, 50, 5, 0},
    {5417.5, 60, 6, 0}, {5417.0, 70, 7, 0},
};
static const Entry LEVELS_BUY[] = {
    {5412.0, 5, 1, 0}, {5413.0, 3000000000LL, 2, 0}, {5414.0, 7, 3, 0}, {5415.0, 8, 4, 0}, {5416.0, 9, 5, 0},
};

static Msg add(int side, int position, double price, int64_t qty, int extra, int64_t id) {
    Msg m = incremental(AT_ADD, side, position);
    m.price = price; m.qty = qty; m.extra = extra; m.id = id;
    m.has_price = m.has_qty = m.has_id = m.has_agent = 1;
    return m;
}

static Msg edit(int side, int position, int64_t qty, int extra, uc has_extra) {
    Msg m = incremental(AT_EDIT, side, position);
    m.qty = qty; m.extra = extra; m.has_qty = 1; m.has_agent = has_extra;
    return m;
}

static void offer_script(int phase) {
    if (phase == 0) { /* what a subscription sends first: the whole book, 3 offers a page */
        set_side(OFFER, SELL, OPEN_SELL, 7);
        set_side(OFFER, BUY, OPEN_BUY, 5);
        send_full(OFFER, 3);
    } else if (phase == 1) { /* every incremental action, and two bad messages */
        act(OFFER, add(BUY, 0, 5416.5, 8589934597LL, 3, 301)); /* a new best bid of 2^33 + 5 */
        act(OFFER, add(SELL, 2, 5417.5, 4, 8, 302));           /* behind the 5417.5 already there */
        act(OFFER, edit(BUY, 1, -2, 0, 0));                     /* 5416.0: 9 - 2 */
        act(OFFER, incremental(AT_DELETE, SELL, 0));            /* the best ask (5417.0) goes */
        Msg stale = add(BUY, 1, 5416.5, 6, 45, 303);            /* behind 301, with a stale date */
        stale.has_date = 0;
        act(OFFER, stale);
        act(OFFER, incremental(AT_DELETE_FROM, BUY, 2));        /* 5416.0 and both 5416.5 go */
        act(OFFER, incremental(AT_DELETE, SELL, 99));           /* no such position: a desync */
        act(OFFER, incremental(7, SELL, 0));                    /* no such action */
        act(OFFER, edit(SELL, 0, 3, 386, 1));                   /* 106: 60 + 3, now agent 386 */
    } else if (phase == 2) { /* a new whole book replaces it, 2 offers a page */
        set_side(OFFER, SELL, RESYNC_SELL, 5);
        set_side(OFFER, BUY, RESYNC_BUY, 4);
        send_full(OFFER, 2);
    }
}

static void price_script(int phase) {
    if (phase == 0) { /* the whole book, one page a side (the manual documents no trailer, so no pages) */
        set_side(PRICE, SELL, LEVELS_SELL, 7);
        set_side(PRICE, BUY, LEVELS_BUY, 5);
        send_full(PRICE, MAXN);
    } else if (phase == 1) {
        act(PRICE, add(BUY, 0, 5416.5, 4294967301LL, 2, 0)); /* a new best bid of 2^32 + 5 */
        act(PRICE, edit(SELL, 0, 77, 4, 1));                  /* 5417.0 now 77 in 4 orders */
        act(PRICE, incremental(AT_DELETE, BUY, 1));           /* 5416.0 goes */
        act(PRICE, incremental(AT_DELETE_FROM, SELL, 1));     /* 5417.5 and 5417.0 go */
        act(PRICE, incremental(AT_DELETE, BUY, 50));          /* no such position: a desync */
    }
}

/* ---- random sessions ---- */
#define GRID 12
static double grid_price(int side, int k) { return side == SELL ? 5417.0 + 0.5 * k : 5416.5 - 0.5 * k; }

/* where an entry at `price` goes so the list stays sorted, the best at the end; among equal prices a new
 * order goes behind (before) the ones already there, which keep their time priority */
static int insertion(int which, int side, double price) {
    int at = 0;
    while (at < book_n[which][side]
           && (side == BUY ? book[which][side][at].price < price : book[which][side][at].price > price))
        at++;
    return at;
}

static int64_t random_qty(void) { return below(15) == 0 ? 2147483648LL + below(1 << 30) : 1 + below(50); }

static int64_t next_id = 10000;

static void random_book(int which) {
    for (int side = BUY; side <= SELL; side++) {
        int n = 0, levels = below(GRID);
        for (int k = levels - 1; k >= 0; k--) { /* worst first */
            int orders = which == OFFER ? 1 + below(3) : 1;
            for (int o = 0; o < orders && n < MAXN; o++)
                book[which][side][n++] = (Entry){grid_price(side, k), random_qty(),
                                                 which == OFFER ? below(400) : 1 + below(20),
                                                 which == OFFER ? next_id++ : 0};
        }
        book_n[which][side] = n;
    }
}

static void random_step(int which) {
    int side = below(2), n = book_n[which][side], roll = below(100);
    Msg m;
    if (roll < 3) { /* a new whole book: offers in pages of 1 to 4, levels a side in one page (no trailer) */
        random_book(which);
        send_full(which, which == OFFER ? 1 + below(4) : MAXN);
        return;
    }
    if (n == 0 || roll < 45) {
        double price = grid_price(side, below(GRID));
        int at = insertion(which, side, price);
        if (which == PRICE && at < n && book[which][side][at].price == price) {
            m = edit(side, n - at - 1, random_qty(), 1 + below(20), 1); /* the level exists: its new total */
        } else {
            m = add(side, n - at, price, random_qty(), which == OFFER ? below(400) : 1 + below(20),
                    which == OFFER ? next_id++ : 0);
        }
    } else if (roll < 70) {
        int position = below(n);
        if (which == OFFER) {
            int64_t qty = book[which][side][n - position - 1].qty;
            int64_t delta = qty > 1 ? -(int64_t)below((int)(qty > 1000 ? 1000 : qty - 1)) : 0;
            m = edit(side, position, below(4) ? delta : 1 + below(9), below(400), (uc)(below(3) == 0));
        } else {
            m = edit(side, position, random_qty(), 1 + below(20), 1);
        }
    } else if (roll < 93) {
        m = incremental(AT_DELETE, side, below(n));
    } else {
        m = incremental(AT_DELETE_FROM, side, below(n < 3 ? n : 3));
    }
    m.has_date = (uc)(below(8) != 0);
    act(which, m);
}

/* ---- jobs and exports ---- */
/* a job's argument: which book in the low byte, the phase or the number of steps above it */
static void *script_job(void *arg) {
    intptr_t which = (intptr_t)arg & 0xff, phase = (intptr_t)arg >> 8;
    if (which == OFFER) offer_script((int)phase); else price_script((int)phase);
    return NULL;
}

static void *random_job(void *arg) {
    intptr_t which = (intptr_t)arg & 0xff, steps = (intptr_t)arg >> 8;
    for (intptr_t i = 0; i < steps; i++) random_step((int)which);
    return NULL;
}

static int subscribe_book(int which, const wchar_t *ticker) {
    pthread_mutex_lock(&connector);
    wcsncpy(book_ticker[which], ticker, 63);
    pthread_mutex_unlock(&connector);
    return spawn_arg(script_job, which);
}

int SubscribeOfferBook(const wchar_t *ticker, const wchar_t *exchange) { (void)exchange; return subscribe_book(OFFER, ticker); }
int SubscribePriceBook(const wchar_t *ticker, const wchar_t *exchange) { (void)exchange; return subscribe_book(PRICE, ticker); }
int UnsubscribeOfferBook(const wchar_t *ticker, const wchar_t *exchange) { (void)ticker; (void)exchange; return 0; }
int UnsubscribePriceBook(const wchar_t *ticker, const wchar_t *exchange) { (void)ticker; (void)exchange; return 0; }
int SetOfferBookCallback(TOfferBookCallback cb) { pthread_mutex_lock(&connector); offer_v1 = cb; pthread_mutex_unlock(&connector); return 0; }
int SetOfferBookCallbackV2(TOfferBookCallbackV2 cb) { pthread_mutex_lock(&connector); offer_v2 = cb; pthread_mutex_unlock(&connector); return 0; }
int SetPriceBookCallback(TPriceBookCallback cb) { pthread_mutex_lock(&connector); price_v1 = cb; pthread_mutex_unlock(&connector); return 0; }
int SetPriceBookCallbackV2(TPriceBookCallbackV2 cb) { pthread_mutex_lock(&connector); price_v2 = cb; pthread_mutex_unlock(&connector); return 0; }

/* The test's controls: run a scripted phase, or `steps` random messages from `seed` (0: keep the sequence). */
int FakeBookScript(int which, int phase) { return spawn_arg(script_job, which | (intptr_t)phase << 8); }
int FakeBookRandom(int which, unsigned seed, int steps) {
    pthread_mutex_lock(&connector);
    if (seed) rng = seed * 2654435761ull + 1;
    pthread_mutex_unlock(&connector);
    return spawn_arg(random_job, which | (intptr_t)steps << 8);
}

/* Our own book, one side (index order, the best last): n entries copied into the arrays (up to max). */
int FakeBookSnapshot(int which, int side, double *price, int64_t *qty, int *extra, int64_t *id, int max) {
    pthread_mutex_lock(&connector);
    int n = book_n[which][side];
    for (int i = 0; i < n && i < max; i++) {
        price[i] = book[which][side][i].price; qty[i] = book[which][side][i].qty;
        extra[i] = book[which][side][i].extra; id[i] = book[which][side][i].id;
    }
    pthread_mutex_unlock(&connector);
    return n;
}

long FakeBookCalls(int which, int version) { return calls[which][version]; }
long FakePagesMade(int version) { return pages_made[version]; }
long FakePagesFreed(int version) { return pages_freed[version]; }
long FakeBadFrees(void) { return bad_frees; }

/* Everything back to the start (between tests: the library stays loaded in the process). */
void FakeReset(void) {
    for (int i = 0; i < 10000 && FakeBusy(); i++) usleep(1000);
    pthread_mutex_lock(&connector);
    memset(book_n, 0, sizeof book_n); memset(calls, 0, sizeof calls);
    pthread_mutex_lock(&page_lock);
    for (int i = 0; i < n_outstanding; i++) free(outstanding[i].ptr); /* a previous test's, never freed */
    n_outstanding = 0;
    memset(pages_made, 0, sizeof pages_made); memset(pages_freed, 0, sizeof pages_freed);
    bad_frees = 0;
    pthread_mutex_unlock(&page_lock);
    offer_v1 = NULL; offer_v2 = NULL; price_v1 = NULL; price_v2 = NULL;
    clock_ms = 0; next_id = 10000; rng = 88172645463325252ull;
    history_step = 60; history_asks = 0; history_sent = 0; history_v1_calls = 0; history_v2_calls = 0;
    tick_clock(1);
    pthread_mutex_unlock(&connector);
}
