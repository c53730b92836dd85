addEventListener("fetch", (event) =>
  event.respondWith(new Response("Hello, world!\n", { headers: { "content-type": "text/plain; charset=utf-8" } })),
);
