/* A stand-in for Nelogica's ProfitDLL with the same exported functions and callback signatures
 * (C calling convention; the real DLL is stdcall on Windows). Every callback is called from a
 * thread of this library, never from the caller's, as the real DLL does. The trades it sends are
 * fixed here so the test knows exactly what must arrive. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
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

static TStateCallback on_state;
static TNewTradeCallback on_trade;
static THistoryTradeCallback on_history;
static TProgressCallback on_progress;
static int login_ok;
static volatile int busy;
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
static const Trade HISTORY[] = {
    {L"WINZ25", L"21/11/2025 09:00:00.000", 1, 130000.0, 26000.0, 1, 15, 16, 2, 0},
    {L"WINZ25", L"21/11/2025 09:00:00.250", 2, 130005.0, 52002.0, 2, 16, 15, 3, 0},
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
    if (!login_ok) { on_state(0, 1); busy = 0; return NULL; }  /* login: invalid credentials */
    on_state(0, 0);  /* login connected */
    on_state(2, 4);  /* market data connected */
    busy = 0;
    return NULL;
}

static void *live_thread(void *arg) {
    (void)arg;
    for (size_t i = 0; i < sizeof LIVE / sizeof LIVE[0]; i++) send_trade(&LIVE[i], 0);
    busy = 0;
    return NULL;
}

static void *history_thread(void *arg) {
    (void)arg;
    for (size_t i = 0; i < sizeof HISTORY / sizeof HISTORY[0]; i++) send_trade(&HISTORY[i], 1);
    TAssetIDRec asset = {L"WINZ25", L"F", 0};
    on_progress(asset, 100);
    busy = 0;
    return NULL;
}

static int spawn(void *(*fn)(void *)) {
    pthread_t t;
    busy = 1;
    if (pthread_create(&t, NULL, fn, NULL) != 0) return -1;
    pthread_detach(t);
    return 0;
}

int DLLInitializeMarketLogin(const wchar_t *key, const wchar_t *user, const wchar_t *password, TStateCallback state,
                             TNewTradeCallback trade, TAny daily, TAny price_book, TAny offer_book,
                             THistoryTradeCallback history, TProgressCallback progress, TAny tiny_book) {
    (void)daily; (void)price_book; (void)offer_book; (void)tiny_book;
    on_state = state; on_trade = trade; on_history = history; on_progress = progress;
    login_ok = wcscmp(key, L"KEY-123") == 0 && wcscmp(user, L"trader") == 0 && wcscmp(password, L"s3cret") == 0;
    return spawn(login_thread);
}

int SubscribeTicker(const wchar_t *ticker, const wchar_t *exchange) {
    (void)exchange;
    wcsncpy(subscribed, ticker, 63);
    return spawn(live_thread);
}

int UnsubscribeTicker(const wchar_t *ticker, const wchar_t *exchange) { (void)ticker; (void)exchange; return 0; }

int GetHistoryTrades(const wchar_t *ticker, const wchar_t *exchange, const wchar_t *start, const wchar_t *end) {
    (void)ticker; (void)exchange; (void)start; (void)end;
    return spawn(history_thread);
}

int FakeBusy(void) { return busy; }

int DLLFinalize(void) { return 0; }
