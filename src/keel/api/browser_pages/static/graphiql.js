// Starts GraphiQL on Keel's /graphql page (no inline script: see keel/api/browser_pages/graphiql.py).
"use strict";
(function () {
  const url = new URL(window.location.href);
  url.search = "";
  url.hash = "";
  const fetcher = GraphiQL.createFetcher({ url: url.toString() });
  const root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: "# Add an Authorization header (Headers tab below), then run:\n{\n  viewer {\n    keyId\n  }\n}\n",
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      // Headers hold API keys: never written to the browser's storage.
      shouldPersistHeaders: false,
      inputValueDeprecation: true,
    }),
  );
})();
